"""Shared fixtures, each written once: tiny models with random weights, a checkpoint in the official
SAM layout, one torch thread, and (through the plugins below) the training and evaluation data.

What a fixture writes is read-only for the tests that take it: session-scoped fixtures write into
``tmp_path_factory`` once, and a test that damages or changes files copies them first (or makes its
own in ``tmp_path``). The training fixtures (a shapes folder, a test teacher, its embedding cache)
live in ``tests/train_fixtures.py``, the evaluation ones (a shapes folder in every format) in
``tests/eval_fixtures.py``, next to their helpers; both are registered here for the whole suite.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
import torch

from biglittle_sam import sam_model_registry

pytest_plugins = ("tests.train_fixtures", "tests.eval_fixtures")


def randomize_(module: torch.nn.Module, std: float = 0.2, seed: int = 0) -> torch.nn.Module:
    """Fill every parameter with noise, so zero-initialized tables (rel_pos) are exercised too."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return module


@pytest.fixture(scope="session")
def tiny_sam_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random ``vit_tiny`` SAM saved as ``torch.save(model.state_dict())``: the official
    layout."""
    torch.manual_seed(0)
    sam = sam_model_registry["vit_tiny"]()
    randomize_(sam.image_encoder, std=0.1)
    path = tmp_path_factory.mktemp("ckpt") / "sam_vit_tiny.pth"
    torch.save(sam.state_dict(), path)
    return path


@pytest.fixture()
def one_thread() -> Iterator[None]:
    """Run torch on one thread, restoring the count afterwards: tiny ops are fastest so on a busy
    2-core machine, and give the same numbers as a torchrun worker (OMP_NUM_THREADS=1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture()
def tiny_sam(tiny_sam_checkpoint: Path) -> torch.nn.Module:
    return sam_model_registry["vit_tiny"](checkpoint=tiny_sam_checkpoint)


@pytest.fixture()
def tiny_bl(tiny_sam_checkpoint: Path) -> torch.nn.Module:
    return sam_model_registry["bl_tiny"](
        sam_checkpoint=tiny_sam_checkpoint, keep_ratio=0.5, training_free=False
    )


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built once per session from a copy of the tree
    (test_install.py installs it, test_packaging.py reads its file list)."""
    from .wheel_build import build_wheel

    return build_wheel(tmp_path_factory.mktemp("wheel"))
