"""Shared fixtures: tiny models with random weights and checkpoints in the official SAM layout."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from biglittle_sam import sam_model_registry


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
def tiny_sam(tiny_sam_checkpoint: Path) -> torch.nn.Module:
    return sam_model_registry["vit_tiny"](checkpoint=tiny_sam_checkpoint)


@pytest.fixture()
def tiny_bl(tiny_sam_checkpoint: Path) -> torch.nn.Module:
    return sam_model_registry["bl_tiny"](sam_checkpoint=tiny_sam_checkpoint, keep_ratio=0.5)
