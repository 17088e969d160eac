"""What the second proxy benchmark runs: a teacher shaped like SAM ViT-B, students at matched cost.

Geometry (``GEOMETRIES``): 4 px patches, so a token holds 48 pixel values for 64 channels (SAM
ViT-B: 768 values for 768 channels) and the decoder's mask logits (4 x the grid) are the image's
own pixels; 6 layers with layers 2 and 5 global (SAM's one in three); 7-token windows that tile the
grid with partial windows at the right and bottom edge (SAM ViT-B: 64 = 4 x 14 + 8).

- ``"24"``: 96 px, a 24 x 24 grid in 4 x 4 windows (edge windows 3 wide): the default, the
  largest grid whose full run (teacher and seven students) fits 120 minutes on 2 cores. Objects
  sized in tokens as SAM sees COCO (small 1-3 tokens across, medium 3-10, large above) come out
  close to COCO's proportions (about 41 / 38 / 21%) and cover about 30% of an image.
- ``"32"``: 128 px, a 32 x 32 grid in 5 x 5 windows (edge 4): closer to COCO's proportions
  (about 39 / 35 / 25%), at about 2 to 2.5x the training cost per step (its global attention over
  1024 tokens), so for a GPU.
- ``"16"``: 64 px, a 16 x 16 grid in 3 x 3 windows (edge 2): for trying recipes; its images are
  too small for COCO's large bin (few objects reach 10 of 16 tokens).

:meth:`ProxyV2Settings.check` validates every setting, and matches each dense student to its
big.LITTLE student's MACs, before any stage runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from biglittle_sam.config import (
    BigLittleConfig,
    SamViTConfig,
    biglittle_config_for,
    validate_global_context,
    validate_keep_ratio,
)
from biglittle_sam.distill.students import TIMM_FAMILIES, TimmStudentSpec
from biglittle_sam.flops import encoder_macs
from biglittle_sam.runtime.cli import flag, overrides_flag

from ..budgets import check_budgets
from ..proxy.matching import matched_timm, matched_vit
from ..proxy.settings import GEOMETRIES as V1_GEOMETRIES
from ..proxy.settings import geometry_fields, teacher_config
from ..runs import RunDevice, check_device
from ..stages import read_teacher

__all__ = ["DENSE_KINDS", "GEOMETRIES", "ProxyV2Settings", "dense_matches"]

# The first benchmark's teacher (64 wide, 2 heads, 7-token windows, its decoder) with 4 px patches,
# 6 layers and SAM's one global layer in three.
_COMMON = tuple(
    dict(V1_GEOMETRIES["16"][1:], patch_size=4, depth=6, global_attn_indexes=(2, 5)).items()
)
GEOMETRIES: Dict[str, Tuple[Tuple[str, Any], ...]] = {
    "16": (("img_size", 64),) + _COMMON,
    "24": (("img_size", 96),) + _COMMON,
    "32": (("img_size", 128),) + _COMMON,
}
# Dense students: a narrower ViT (the teacher's depth and heads; MobileSAM distils the embeddings
# of a small encoder), a shallower ViT, and the timm families of MobileSAM and EdgeSAM.
DENSE_KINDS = ("vit_width", "vit_depth", *TIMM_FAMILIES)


@dataclass(frozen=True)
class ProxyV2Settings(RunDevice):
    """Sizes and budgets of the second proxy benchmark (the full run: ``make proxy-benchmark-v2``,
    at most 120 minutes on 2 cores)."""

    out_dir: str = flag("outputs/proxy_v2", "output folder")
    seed: int = flag(0, "run seed; data seeds 3*seed + 1 / 2 / 3 for train / dev / test")
    geometry: str = flag("24", "token grid side", choices=sorted(GEOMETRIES))
    teacher_overrides: Tuple[Tuple[str, Any], ...] = overrides_flag(
        "a teacher config field over the geometry's, e.g. out_chans=128 (repeatable)",
        name="--teacher-override",
    )
    split: str = flag(
        "test",
        "evaluated split: dev (choosing recipes) or test (the table)",
        choices=("dev", "test"),
    )
    train_images: int = flag(3000, "training images (the teacher's and the students')")
    eval_images: int = flag(200, "images of the evaluated split")
    teacher_steps: int = flag(2000, "teacher training steps")
    teacher_lr: float = flag(1e-3, "teacher learning rate")
    teacher_batch_size: int = flag(8, "images per teacher step")
    teacher_focal_weight: float = flag(0.5, "the teacher's focal loss weight (dice: 1)")
    teacher_objects: int = flag(8, "objects per image per teacher step (a random subset)")
    teacher_refine_clicks: int = flag(2, "the teacher's correcting clicks after each first prompt")
    student_little_dim: int = flag(16, "the big.LITTLE student's E-block width")
    student_little_heads: int = flag(2, "the big.LITTLE student's E-block heads")
    # 6: blocks of 4 x 4 tokens on the 24 x 24 grid, the share of a 7-token window that bl_b's
    # default (8 x 8 blocks of its 64 x 64 grid, windows of 14) pools.
    student_global_context_pool: int = flag(6, "pooled grid side of the global context")
    student_steps: int = flag(500, "distillation phase 1 steps (every student)")
    student_lr: float = flag(2e-3, "phase 1 learning rate")
    phase2_steps: int = flag(200, "distillation phase 2 steps, the teacher's masks (0: off)")
    phase2_lr: float = flag(5e-4, "phase 2 learning rate")
    batch_size: int = flag(8, "images per distillation step")
    ratios: Tuple[float, ...] = flag((0.5, 0.25, 0.1), "the big.LITTLE student's keep ratios")
    student_parts: str = flag(
        "encoder",
        "what the big.LITTLE student trains: encoder (every encoder weight, as the dense "
        "students) or little (E-blocks, routers and context; the teacher's blocks stay)",
        choices=("encoder", "little"),
    )
    copy_student: bool = flag(
        True,
        "also distil the student that starts from the training-free model (its copy rule, an "
        "E-block and a gate learned on top: little_correction), with the same recipe",
    )
    copy_dense_layers: Tuple[int, ...] = flag(
        (),
        "layers the student from the training-free model runs densely (the training-free mode's "
        "default is the first; its E-block gives that layer context, and routing it too matches "
        "the big.LITTLE student's MACs)",
        nargs="*",
    )
    copy_at_one: bool = flag(
        True,
        "the student from the training-free model also draws r = 1 in phase 1, as the big.LITTLE "
        "student does (at r = 1 it runs the teacher's blocks alone, no E-block)",
    )
    dense: Tuple[str, ...] = flag(
        ("vit_width", "tiny_vit"),
        "dense students matched at every ratio (none: --dense with no value, dev only)",
        choices=DENSE_KINDS,
        nargs="*",
    )
    latency_rounds: int = flag(7, "rounds of the one-process latency measurement (median)")
    device: str = flag("auto", "auto (CUDA when available), cpu, cuda or cuda:N")
    processes: Optional[int] = flag(
        None, "processes per training stage (default: 1 on cuda, 2 on cpu)"
    )
    threads: int = flag(1, "torch threads per process")
    progress: bool = flag(True, "progress lines")
    resume: bool = flag(
        False, "continue an interrupted run in the same out-dir (finished stages are reused)"
    )
    assets_dir: Optional[str] = flag(
        None, "test split only: also write the fp16 teacher and student (the demo's models) here"
    )
    teacher_checkpoint: Optional[str] = flag(
        None, "dev split only: use this trained teacher (same geometry) instead of training one"
    )
    stop_after: Optional[str] = flag(
        None,
        "dev split only: stop after this stage (teacher: try teacher recipes, then "
        "python -m experiments.proxy.curve OUT --token-patch 4) (default: run every stage)",
        choices=("teacher",),
    )
    command: str = ""  # the command line that ran this, recorded in the outputs

    def __post_init__(self) -> None:
        for name in ("ratios", "dense", "copy_dense_layers"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(
            self, "teacher_overrides", tuple((str(k), v) for k, v in self.teacher_overrides)
        )

    @property
    def teacher_fields(self) -> Tuple[Tuple[str, Any], ...]:
        """The teacher's vit_tiny fields: the geometry's, then ``teacher_overrides``."""
        return geometry_fields(GEOMETRIES, self.geometry, self.teacher_overrides)

    @property
    def student_overrides(self) -> Tuple[Tuple[str, Any], ...]:
        """The bl_tiny student's E-block fields and its pooled global context."""
        return (
            ("little_dim", self.student_little_dim),
            ("little_heads", self.student_little_heads),
            ("global_context", "pooled"),
            ("global_context_pool", self.student_global_context_pool),
        )

    @property
    def copy_student_overrides(self) -> Tuple[Tuple[str, Any], ...]:
        """The student that starts from the training-free model: its layout (edge score, copy
        rule), with E-blocks of the big.LITTLE student's width and a copy gate learned on top."""
        return (
            ("training_free", True),
            ("little_correction", True),
            ("dense_layers", self.copy_dense_layers),
            ("little_dim", self.student_little_dim),
            ("little_heads", self.student_little_heads),
        )

    def student_config(self, teacher: SamViTConfig) -> BigLittleConfig:
        """The big.LITTLE student's config (as ``bl_tiny`` with the overrides builds it)."""
        return biglittle_config_for(teacher, "bl_tiny", **dict(self.student_overrides))

    def check(self) -> SamViTConfig:
        """Validate everything a stage would trip on later and match the dense students; returns
        the teacher's config.

        Raises:
          ValueError: naming the setting and the expected form (a geometry that does not tile,
            global layers out of range, keep ratios outside (0, 1], an unmatchable student...).
        """
        if self.geometry not in GEOMETRIES:
            raise ValueError(f"geometry must be one of {sorted(GEOMETRIES)}, got {self.geometry!r}")
        if self.split not in ("dev", "test"):
            raise ValueError(f"split must be 'dev' or 'test', got {self.split!r}")
        if self.assets_dir and self.split != "test":
            raise ValueError(f"assets_dir: written from a test-split run only, got {self.split!r}")
        if self.stop_after and (self.split != "dev" or self.teacher_checkpoint):
            raise ValueError(
                "stop_after: for trying teacher recipes on the dev split, with a teacher the run "
                f"trains (got split {self.split!r}, teacher_checkpoint {self.teacher_checkpoint})"
            )
        if self.teacher_checkpoint and self.split != "dev":
            raise ValueError(
                "teacher_checkpoint: a given teacher is for choosing student recipes on the dev "
                f"split; the table's run trains its own, got split {self.split!r}"
            )
        positive = ("train_images", "eval_images", "teacher_steps", "teacher_batch_size")
        check_budgets(
            self, positive + ("teacher_objects", "student_steps", "batch_size", "latency_rounds")
        )
        if self.teacher_refine_clicks < 0:
            raise ValueError(
                f"teacher_refine_clicks must be >= 0 (0: no correcting clicks), got "
                f"{self.teacher_refine_clicks}"
            )
        if not self.ratios:
            raise ValueError("ratios must list at least one keep ratio in (0, 1]")
        for r in self.ratios:
            try:
                validate_keep_ratio(r)
            except ValueError as error:
                raise ValueError(f"ratios: {error}") from None
        if not self.dense and self.split != "dev":
            raise ValueError(
                f"dense: the table compares dense students at every ratio; none is for the dev "
                f"split only, got split {self.split!r}"
            )
        unknown = [d for d in self.dense if d not in DENSE_KINDS]
        if unknown:
            raise ValueError(f"dense: unknown students {unknown}; expected some of {DENSE_KINDS}")
        check_device(self.device)
        config = teacher_config(self.teacher_fields)
        validate_global_context("pooled", config.grid_size, self.student_global_context_pool)
        dense_matches(self, config)  # ValueError for a student no size matches
        if self.copy_student:
            try:
                biglittle_config_for(config, "bl_tiny", **dict(self.copy_student_overrides))
            except ValueError as error:
                raise ValueError(f"copy_dense_layers: {error}") from None
        if self.teacher_checkpoint:
            read_teacher(Path(self.teacher_checkpoint), config)
        return config


def dense_matches(
    settings: ProxyV2Settings, teacher: SamViTConfig
) -> List[Tuple[str, float, Any, int]]:
    """Every dense student of the run: (kind, keep ratio, its config or timm spec, target MACs).

    The target is the big.LITTLE student's encoder MACs at the ratio (``flops.encoder_macs``);
    each student is within 5% of it.

    Raises:
      ValueError: a student no size matches (naming the closest and its MACs).
    """
    student = settings.student_config(teacher)
    out: List[Tuple[str, float, Any, int]] = []
    for ratio in settings.ratios:
        target = encoder_macs(student, keep_ratio=ratio)["total"]
        for kind in settings.dense:
            spec: Any
            if kind.startswith("vit_"):
                spec = matched_vit(target, teacher, shrink=kind[len("vit_") :])
            else:
                spec = matched_timm(target, teacher, family=kind)
            out.append((kind, ratio, spec, target))
    return out


def dense_label(kind: str, ratio: float, spec: Any) -> str:
    """A row name with the size that was matched: ``"vit_width d6 w38 (= r 0.25)"``,
    ``"tiny_vit_w27_d2242 (= r 0.25)"``."""
    if isinstance(spec, TimmStudentSpec):
        return f"{spec.name} (= r {ratio:g})"
    return f"{kind} d{spec.depth} w{spec.embed_dim} (= r {ratio:g})"
