"""What the proxy benchmark runs: SAM's token geometry at a size two CPU cores can train.

Two geometries (``GEOMETRIES``), both 8 px patches with 7-token windows and two global layers,
so the grid tiles into windows the way SAM ViT-B's 64 x 64 grid tiles into 5 x 5 windows of 14
(partial windows at the right and bottom edge):

- ``"16"``: 128 px, a 16 x 16 grid in 3 x 3 windows (edge windows 2 wide), 64 x 64 mask logits;
- ``"32"``: 256 px, a 32 x 32 grid in 5 x 5 windows (edge windows 4 wide, SAM's layout halved),
  128 x 128 mask logits.

:meth:`ProxyBenchmarkSettings.check` validates the geometry and the keep ratios before any stage
runs, so a bad setting fails in a second instead of after the teacher's training.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from biglittle_sam.config import (
    SamViTConfig,
    get_config,
    validate_global_context,
    validate_keep_ratio,
)
from biglittle_sam.runtime.cli import flag

from ..budgets import check_budgets
from ..runs import RunDevice, check_device
from ..stages import read_teacher

__all__ = [
    "GEOMETRIES",
    "ProxyBenchmarkSettings",
    "SPLITS",
    "geometry_fields",
    "geometry_summary",
    "split_seeds",
    "teacher_config",
]

SPLITS = ("train", "dev", "test")

# vit_tiny fields per geometry; the decoder is 64 wide (its upscaled mask features: 8 channels).
_COMMON: Tuple[Tuple[str, Any], ...] = (
    ("patch_size", 8),
    ("embed_dim", 64),
    ("depth", 4),
    ("num_heads", 2),
    ("window_size", 7),
    ("global_attn_indexes", (1, 3)),
    ("out_chans", 64),
    ("decoder_mlp_dim", 128),
    ("decoder_heads", 2),
    ("iou_head_hidden_dim", 64),
    ("mask_in_chans", 8),
)
GEOMETRIES: Dict[str, Tuple[Tuple[str, Any], ...]] = {
    "16": (("img_size", 128),) + _COMMON,
    "32": (("img_size", 256),) + _COMMON,
}


def geometry_fields(
    geometries: Dict[str, Tuple[Tuple[str, Any], ...]],
    geometry: str,
    overrides: Tuple[Tuple[str, Any], ...],
) -> Tuple[Tuple[str, Any], ...]:
    """A teacher's vit_tiny fields: ``geometries[geometry]``'s (none for an unknown name, which
    ``check`` refuses), then ``overrides``."""
    fields = dict(geometries.get(geometry, ()))
    fields.update(overrides)
    return tuple(fields.items())


def split_seeds(seed: int) -> Dict[str, int]:
    """The data seed of each split: ``3 * seed + 1, + 2, + 3``, disjoint for every run seed."""
    return {name: 3 * seed + 1 + i for i, name in enumerate(SPLITS)}


def teacher_config(fields: Tuple[Tuple[str, Any], ...]) -> SamViTConfig:
    """``vit_tiny`` with ``fields`` replaced; ValueError naming the problem for a bad geometry."""
    known = {f.name for f in dataclasses.fields(SamViTConfig)}
    unknown = sorted(k for k, _ in fields if k not in known)
    if unknown:
        raise ValueError(f"unknown teacher fields {unknown}; expected fields of SamViTConfig")
    values = dict(fields)
    size, patch = values.get("img_size"), values.get("patch_size")
    if size is not None and patch is not None and (patch < 1 or size % patch):
        raise ValueError(
            f"proxy geometry: img_size {size} does not tile into {patch} px patches; the image "
            "size must be a multiple of the patch size"
        )
    base = get_config("vit_tiny")
    return dataclasses.replace(base, name="vit_tiny", **values)  # type: ignore[arg-type]


def geometry_summary(config: SamViTConfig) -> Dict[str, Any]:
    """Grid, windows, edge window width, global layers and mask logit side of a teacher config."""
    grid, window = config.grid_size, config.window_size
    per_side = math.ceil(grid / window)
    edge = grid - (per_side - 1) * window
    return {
        "img_size": config.img_size,
        "patch_size": config.patch_size,
        "grid": grid,
        "tokens": grid * grid,
        "windows": f"{per_side} x {per_side} of {window}",
        "edge_window": edge,
        "global_layers": len(config.global_attn_indexes),
        "depth": config.depth,
        "mask_logits": 4 * grid,
    }


@dataclass(frozen=True)
class ProxyBenchmarkSettings(RunDevice):
    """Sizes and budgets of the proxy benchmark.

    The defaults are the full run at the 16 x 16 geometry; ``docs/benchmarks/proxy.md`` has its
    results and stage times.
    """

    out_dir: str = flag("outputs/proxy_benchmark", "output folder")
    # data seeds: split_seeds(seed); weights and prompts: seed
    seed: int = flag(0, "run seed; data seeds 3*seed + 1 / 2 / 3 for train / dev / test")
    geometry: str = flag("16", "token grid side", choices=sorted(GEOMETRIES))
    teacher_overrides: Tuple[Tuple[str, Any], ...] = ()  # vit_tiny fields over the geometry's
    split: str = flag(
        "test",
        "evaluated split: dev (choosing recipes, no table) or test (the table)",
        choices=("dev", "test"),
    )
    train_images: int = flag(2000, "the teacher's training images")
    # None: the teacher's images
    distill_images: Optional[int] = flag(
        6000, "the students' training images (the teacher's and more)"
    )
    eval_images: int = flag(200, "images of the evaluated split")
    # 5000: the teacher was still improving at 4000 (dev curve), and 5000 steps of ~0.4 s fit the
    # 60-minute budget with the other stages on 2 cores.
    teacher_steps: int = flag(5000, "teacher training steps")
    teacher_lr: float = flag(1e-3, "teacher learning rate")
    teacher_batch_size: int = flag(8, "images per teacher step")
    teacher_focal_weight: float = 2.0  # from scratch, SAM's 20:1 first collapses to empty masks
    student_little_dim: int = flag(16, "the student's E-block width")
    student_little_heads: int = flag(2, "the student's E-block heads")
    # 2.0 with little_dim 8 is the proxy's analogue of bl_b_lite (docs/speed.md); its pooled
    # keys/values need an even window, and the proxy's windows are 7 tokens.
    student_little_mlp_ratio: float = flag(
        4.0, "the student's E-block MLP ratio (2: the lite analogue)"
    )
    # "none" keeps the student's layout as before (and its rows comparable with earlier runs).
    student_global_context: str = flag(
        "none",
        "what the student's skipped tokens see in global layers",
        choices=("none", "pooled", "nearest"),
    )
    # 4: blocks of 4 x 4 tokens on the 16 x 16 grid, the share of a window that bl_b's default
    # (8 x 8 tokens of its 64 x 64 grid, windows of 14) pools.
    student_global_context_pool: int = flag(4, "pooled grid side P of 'pooled' (divides the grid)")
    student_steps: int = flag(3000, "distillation phase 1 steps")
    student_lr: float = flag(2e-3, "phase 1 learning rate")
    phase2_steps: int = flag(1500, "distillation phase 2 steps (0: off)")
    phase2_lr: float = flag(5e-4, "phase 2 learning rate")
    phase2_keep_ratios: Tuple[float, ...] = flag(
        (0.1, 0.25, 0.5), "keep ratios drawn per phase 2 step"
    )
    phase2_mask_weight: float = 10.0
    phase2_point_prob: float = 0.75
    phase2_router_lr_scale: float = 5.0
    routers_steps: int = flag(1000, "routers-only ablation steps")
    keep_ratios: Tuple[float, ...] = flag(
        (0.1, 0.25, 0.5, 1.0), "keep ratios drawn per phase 1 step"
    )
    eval_ratios: Tuple[float, ...] = flag((1.0, 0.5, 0.25, 0.1), "keep ratios of the table's rows")
    batch_size: int = flag(8, "images per distillation step")
    device: str = flag("auto", "auto (CUDA when available), cpu, cuda or cuda:N")
    # per training stage; None: 1 on cuda, min(2, CPUs) on cpu
    processes: Optional[int] = flag(
        None, "processes per training stage (default: 1 on cuda, 2 on cpu)"
    )
    threads: int = flag(1, "torch threads per process")
    num_workers: int = flag(0, "data loader processes per training process")
    progress: bool = flag(True, "progress lines")
    resume: bool = flag(
        False, "continue an interrupted run in the same out-dir (finished stages are reused)"
    )
    assets_dir: Optional[str] = flag(
        None,
        "test split only: also write the fp16 teacher and student (the demo's built-in "
        "models) here (default: not written)",
    )
    teacher_checkpoint: Optional[str] = flag(
        None,
        "dev split only: use this trained teacher (same geometry) instead of training one, to "
        "try student recipes in minutes, e.g. biglittle_sam/assets/proxy_teacher.pth "
        "(default: trained)",
    )
    command: str = ""  # the command line that ran this, recorded in the outputs

    def __post_init__(self) -> None:
        object.__setattr__(self, "keep_ratios", tuple(self.keep_ratios))
        object.__setattr__(self, "phase2_keep_ratios", tuple(self.phase2_keep_ratios))
        object.__setattr__(self, "eval_ratios", tuple(self.eval_ratios))
        object.__setattr__(
            self, "teacher_overrides", tuple((str(k), v) for k, v in self.teacher_overrides)
        )

    def check(self) -> SamViTConfig:
        """Validate everything a stage would trip on later; returns the teacher's config.

        Raises:
          ValueError: naming the setting and the expected form.
        """
        if self.geometry not in GEOMETRIES:
            raise ValueError(f"geometry must be one of {sorted(GEOMETRIES)}, got {self.geometry!r}")
        if self.split not in ("dev", "test"):
            raise ValueError(f"split must be 'dev' or 'test', got {self.split!r}")
        if self.assets_dir and self.split != "test":
            raise ValueError(
                "assets_dir: the built-in models are written from a test-split run only "
                f"(their description holds its table), got split {self.split!r}"
            )
        if self.teacher_checkpoint and self.split != "dev":
            raise ValueError(
                "teacher_checkpoint: a given teacher is for choosing student recipes on the dev "
                f"split; the table comes from a run that trains its own teacher, got split "
                f"{self.split!r}"
            )
        check_budgets(
            self,
            (
                "train_images",
                "eval_images",
                "teacher_steps",
                "teacher_batch_size",
                "student_steps",
                "routers_steps",
                "batch_size",
            ),
        )
        dim, heads = self.student_little_dim, self.student_little_heads
        if dim < 1 or heads < 1 or dim % heads:
            raise ValueError(
                f"student_little_dim ({dim}) must be a positive multiple of student_little_heads "
                f"({heads})"
            )
        if not self.student_little_mlp_ratio > 0:
            raise ValueError(
                f"student_little_mlp_ratio must be > 0, got {self.student_little_mlp_ratio}"
            )
        for name in ("keep_ratios", "phase2_keep_ratios", "eval_ratios"):
            values = getattr(self, name)
            if not values:
                raise ValueError(f"{name} must list at least one keep ratio in (0, 1]")
            for r in values:
                try:
                    validate_keep_ratio(r)
                except ValueError as error:
                    raise ValueError(f"{name}: {error}") from None
        check_device(self.device)
        config = teacher_config(self.teacher_fields)
        pool = self.student_global_context_pool
        validate_global_context(self.student_global_context, config.grid_size, pool)
        if self.teacher_checkpoint:
            read_teacher(Path(self.teacher_checkpoint), config)  # CheckpointError is a ValueError
        return config

    @property
    def teacher_fields(self) -> Tuple[Tuple[str, Any], ...]:
        """The teacher's vit_tiny fields: the geometry's, then ``teacher_overrides``."""
        return geometry_fields(GEOMETRIES, self.geometry, self.teacher_overrides)

    @property
    def student_overrides(self) -> Tuple[Tuple[str, Any], ...]:
        """The bl_tiny student's E-block fields and its global context (always given: this
        benchmark's default, "none", is not the config's)."""
        little: Tuple[Tuple[str, Any], ...] = (
            ("little_dim", self.student_little_dim),
            ("little_heads", self.student_little_heads),
            ("little_mlp_ratio", self.student_little_mlp_ratio),
        )
        if self.student_global_context == "none":
            return little + (("global_context", "none"),)
        return little + (
            ("global_context", self.student_global_context),
            ("global_context_pool", self.student_global_context_pool),
        )

    @property
    def distill_count(self) -> int:
        """Training images made: the teacher's first, then the students' others."""
        return max(self.train_images, self.distill_images or 0)
