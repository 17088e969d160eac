"""Fixtures and helpers of the training, distillation, cache and fine-tuning tests.

Everything is tiny (64 px inputs, an 8 x 8 token grid, two blocks) so that a training step takes
milliseconds on one CPU thread. ``tests/conftest.py`` registers this module as a plugin, so its
fixtures (``shapes``, ``teacher_ckpt``, ``teacher_cache``) are built once per session and are
read-only: a test that damages data makes its own with :func:`make_shapes` or :func:`build_cache`
in ``tmp_path``. Helpers are imported by name.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest
import torch

from biglittle_sam.build_sam import build_sam_from_config
from biglittle_sam.checkpoint import save_model_checkpoint
from biglittle_sam.config import SAM_CONFIGS, SamViTConfig
from biglittle_sam.data import ShapesConfig, ShapesDataset, make_shapes_dataset
from biglittle_sam.distill import CacheSettings, cache_teacher_embeddings
from biglittle_sam.train import TrainSettings

from .conftest import randomize_

# A vit_tiny teacher at test size: 64 px, patch 8 (8 x 8 grid, 2 x 2 windows of 4), two blocks.
TEACHER_FIELDS: Dict[str, Any] = dict(
    img_size=64,
    patch_size=8,
    embed_dim=32,
    depth=2,
    num_heads=2,
    window_size=4,
    global_attn_indexes=(1,),
    out_chans=16,
    decoder_mlp_dim=32,
    decoder_heads=2,
    iou_head_hidden_dim=16,
    mask_in_chans=4,
)
STUDENT_OVERRIDES = (("little_dim", 8), ("little_heads", 2))


def teacher_config(**changes: Any) -> SamViTConfig:
    """The test teacher's config (``vit_tiny`` with :data:`TEACHER_FIELDS`)."""
    return dataclasses.replace(SAM_CONFIGS["vit_tiny"], **{**TEACHER_FIELDS, **changes})


def save_teacher(path: Path, seed: int = 0, randomize: bool = True, **changes: Any) -> Path:
    """A random test teacher saved as a project checkpoint (it stores its config).

    ``randomize`` fills every encoder weight with noise (so zero-initialized tables are exercised);
    False keeps PyTorch's initialization, a better start for training.
    """
    config = teacher_config(**changes)
    torch.manual_seed(seed)
    sam = build_sam_from_config(config)
    if randomize:
        randomize_(sam.image_encoder, std=0.1, seed=seed)
    return save_model_checkpoint(path, sam, config)


def make_shapes(root: Path, num_images: int = 6, seed: int = 0) -> ShapesDataset:
    """A small COCO-format shapes dataset of 48-64 px images."""
    config = ShapesConfig(
        num_images=num_images,
        seed=seed,
        sizes=((64, 48), (48, 64), (56, 56)),
        min_shapes=2,
        max_shapes=4,
        min_extent=6.0,
        crowd_every=0,
        edge_cases=False,
        formats=("coco",),
        detections=False,
    )
    return make_shapes_dataset(root, config)


def fast_train(out_dir: Path, **changes: Any) -> TrainSettings:
    """Train settings for tests: one thread, no workers, no progress bar, a line every step."""
    base = dict(
        steps=4,
        batch_size=4,
        lr=1e-3,
        warmup_steps=1,
        num_workers=0,
        threads=1,
        progress=False,
        log_every=1,
        checkpoint_every=100,
        out_dir=str(out_dir),
    )
    base.update(changes)
    return TrainSettings(**base)


def build_cache(images: Path, teacher: Path, out: Path, **changes: Any) -> Dict[str, Any]:
    """Cache ``teacher``'s embeddings of ``images`` into ``out``; returns the report."""
    fields: Dict[str, Any] = dict(num_workers=0, batch_size=4, progress=False)
    fields.update(changes)
    settings = CacheSettings(
        images=str(images), out=str(out), teacher_checkpoint=str(teacher), **fields
    )
    report = cache_teacher_embeddings(settings)
    assert report is not None
    return report


@pytest.fixture(scope="session")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> ShapesDataset:
    """Six 48-64 px shapes images with COCO annotations (read-only)."""
    return make_shapes(tmp_path_factory.mktemp("shapes"))


@pytest.fixture(scope="session")
def teacher_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The random test teacher (:func:`save_teacher`), as a project checkpoint (read-only)."""
    return save_teacher(tmp_path_factory.mktemp("teacher") / "teacher.pth")


@pytest.fixture(scope="session")
def teacher_cache(
    tmp_path_factory: pytest.TempPathFactory, shapes: ShapesDataset, teacher_ckpt: Path
) -> Path:
    """The teacher's embeddings of ``shapes``, cached on one thread (read-only)."""
    out = tmp_path_factory.mktemp("cache") / "cache"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        build_cache(shapes.coco_images, teacher_ckpt, out)  # type: ignore[arg-type]
    finally:
        torch.set_num_threads(before)
    return out


def check_batch_equals_one_at_a_time(
    module: torch.nn.Module, sam: torch.nn.Module, items: List[Dict[str, Any]]
) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
    """Run a training module on ``items`` as one batch and on each item alone; assert that the
    per-image losses are equal and the batch's gradient is the sum of the items'. Returns the
    batch's metrics and each item's."""
    from biglittle_sam.train.data import collate_items

    def run(batch_items: List[Dict[str, Any]]) -> Tuple[torch.Tensor, Dict[str, Any], list]:
        sam.zero_grad()
        loss, metrics = module(collate_items(batch_items))
        loss.sum().backward()
        grads = [
            torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in sam.parameters()
        ]
        return loss.detach(), metrics, grads

    together, metrics, grads = run(items)
    alone = [run([item]) for item in items]
    torch.testing.assert_close(together, torch.cat([a[0] for a in alone]), rtol=1e-5, atol=1e-6)
    for g, *parts in zip(grads, *(a[2] for a in alone)):
        torch.testing.assert_close(g, sum(parts), rtol=1e-4, atol=1e-6)
    return metrics, [a[1] for a in alone]
