"""Fixtures of the evaluation and dataset tests.

Test modules load this file with ``pytest_plugins = ("tests.eval_fixtures",)`` (it is not a
conftest, and is never imported directly); plain helpers live in ``tests/eval_helpers.py``.
Everything is small: a handful of generated images of 96-144 px and tiny random-weight models.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
import torch

from biglittle_sam.data import ShapesConfig, make_shapes_dataset
from biglittle_sam.data.shapes import ShapesDataset
from tests.eval_helpers import SMALL_SIZES


@pytest.fixture(scope="session")
def eval_shapes(tmp_path_factory: pytest.TempPathFactory) -> ShapesDataset:
    """Five generated images in every format (read-only: copy before changing files)."""
    root = tmp_path_factory.mktemp("shapes")
    return make_shapes_dataset(root, ShapesConfig(num_images=5, sizes=SMALL_SIZES, seed=3))


@pytest.fixture(scope="session")
def eval_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random vit_tiny saved like an official SAM checkpoint (a flat state dict)."""
    from biglittle_sam import sam_model_registry

    path = tmp_path_factory.mktemp("ckpt") / "sam_vit_tiny.pth"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)
        sam = sam_model_registry["vit_tiny"]()
    torch.save(sam.state_dict(), path)
    return path


@pytest.fixture
def eval_one_thread() -> Iterator[None]:
    """Run torch on one thread: fast on a busy 2-core machine, and the same numbers as a
    torchrun worker (which gets OMP_NUM_THREADS=1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
