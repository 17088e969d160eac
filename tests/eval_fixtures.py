"""Fixtures of the evaluation and dataset tests.

``tests/conftest.py`` registers this file as a plugin (it is never imported directly); plain
helpers live in ``tests/eval_helpers.py``, and the random ``vit_tiny`` checkpoint and
``one_thread`` in ``tests/conftest.py``. Everything is small: a handful of generated images of
96-144 px.
"""

from __future__ import annotations

import pytest

from biglittle_sam.data import ShapesConfig, make_shapes_dataset
from biglittle_sam.data.shapes import ShapesDataset
from tests.eval_helpers import SMALL_SIZES


@pytest.fixture(scope="session")
def eval_shapes(tmp_path_factory: pytest.TempPathFactory) -> ShapesDataset:
    """Five generated images in every format (read-only: copy before changing files)."""
    root = tmp_path_factory.mktemp("shapes")
    return make_shapes_dataset(root, ShapesConfig(num_images=5, sizes=SMALL_SIZES, seed=3))
