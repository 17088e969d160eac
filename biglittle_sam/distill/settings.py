"""The settings of a distillation run (phase 1: embeddings; phase 2: masks under prompts).

One frozen dataclass; every field has a one-line reason, which is also its ``--help`` line in
``tools/distill.py``. Its ``train`` field holds the loop's ``TrainSettings`` with distillation's
own defaults.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any, Optional, Tuple

from ..config import validate_keep_ratio
from ..runtime.cli import flag, overrides_flag
from ..train.data import SOURCE_KINDS
from ..train.models import STUDENT_INITS
from ..train.parts import PARTS
from ..train.settings import TrainSettings

__all__ = ["DEFAULT_KEEP_RATIOS", "DISTILL_FREE_FIELDS", "DistillSettings"]

DEFAULT_KEEP_RATIOS = (0.1, 0.25, 0.5, 1.0)
# Task fields a resumed run may change: paths (the teacher is checked by checksum instead).
DISTILL_FREE_FIELDS = frozenset(
    {
        "cache",
        "images",
        "annotations",
        "sam_checkpoint",
        "teacher_checkpoint",
        "init_checkpoint",
        "strict",
        "save_init",
        "train",
    }
)


@dataclass(frozen=True)
class DistillSettings:
    """A distillation run. Defaults: phase 1, E-blocks and routers, keep ratio drawn per step."""

    cache: str = flag(
        "",
        "the teacher embedding cache folder, made by tools/cache_teacher.py (required, here "
        "or in --config)",
    )
    images: str = flag("", "the images the cache was made from (required, as --cache)")
    dataset: Optional[str] = flag(
        None, "the images' format (default: from the files)", choices=SOURCE_KINDS
    )
    annotations: Optional[str] = None  # COCO / LVIS json (phase 2 needs masks)
    student: str = "bl_b"  # bl_b, bl_l, bl_h, bl_tiny; dense: the dense init_checkpoint's student
    teacher_checkpoint: Optional[str] = None  # the cache's teacher (phase 2 uses its decoder)
    sam_checkpoint: Optional[str] = None  # the SAM the student inherits from (default: the teacher)
    init: str = flag(
        "teacher",
        "teacher: inherit SAM's blocks; none: a random encoder (ablation)",
        choices=STUDENT_INITS,
    )
    init_checkpoint: Optional[str] = None  # a big.LITTLE checkpoint (phase 1 -> 2) or dense student
    student_overrides: Tuple[Tuple[str, Any], ...] = overrides_flag(
        "student config field, e.g. little_dim=192 (repeatable)"
    )
    phase: int = flag(1, choices=(1, 2))  # 1: embeddings; 2: embeddings + masks under prompts
    keep_ratios: Tuple[float, ...] = DEFAULT_KEEP_RATIOS  # one drawn per step
    train_parts: str = flag(
        "little", f"comma-separated subset of {', '.join(PARTS)}; little: E-blocks and routers"
    )
    mse_weight: float = 1.0  # embedding MSE
    cosine_weight: float = 1.0  # embedding cosine distance
    mask_weight: float = 1.0  # phase 2: BCE + Dice against the teacher's masks
    # Phase 2: MSE between the student's and the teacher's predicted IoUs (the frozen IoU head
    # picks which of the three masks SamPredictor returns first; a student that ranks them
    # differently hands back another mask even when all three are right).
    iou_weight: float = flag(0.0, "phase 2: the predicted IoUs' MSE against the teacher's")
    max_instances: int = 16  # phase 2: objects per image per step
    point_prob: float = 0.5  # phase 2: share of objects prompted by a point (else a box)
    refine_click: bool = True  # phase 2: a second round with a click where the masks disagree
    # Phase 2: the BCE's targets are the teacher's mask probabilities (sigmoid of its logits)
    # instead of its binary masks, so the student also learns where the teacher is unsure (the
    # Dice term keeps the binary masks: against soft targets its optimum is not the target).
    soft_targets: bool = flag(
        False,
        "phase 2: the teacher's mask probabilities as targets, not its binary masks",
        action=argparse.BooleanOptionalAction,
    )
    router_noise: float = 0.0  # Gumbel noise on router logits while training (exploration)
    router_noise_anneal: float = 0.75  # share of the steps over which the noise decays to 0
    router_lr_scale: float = 1.0  # routers train at this multiple of lr
    allow_partial_cache: bool = False  # train on the cached images when some have no entry
    save_init: bool = flag(
        True,
        "do not write <out-dir>/init.pth, the student before distillation (by default it is)",
        name="--no-save-init",
        action="store_false",
    )
    limit: Optional[int] = None  # use only the first N images
    strict: bool = False  # an unreadable image stops the run
    train: TrainSettings = field(
        default_factory=lambda: TrainSettings(lr=1e-3, weight_decay=0.01, out_dir="outputs/distill")
    )

    def __post_init__(self) -> None:
        if not self.cache or not self.images:
            raise ValueError("cache and images are required")
        if self.phase not in (1, 2):
            raise ValueError(f"phase must be 1 or 2, got {self.phase}")
        if self.init not in STUDENT_INITS:
            raise ValueError(f"init must be one of {STUDENT_INITS}, got {self.init!r}")
        if not self.keep_ratios:
            raise ValueError("keep_ratios must name at least one ratio")
        for r in self.keep_ratios:
            validate_keep_ratio(r)
        if min(self.mse_weight, self.cosine_weight, self.mask_weight, self.iou_weight) < 0:
            raise ValueError("loss weights must be >= 0")
        if not 0.0 <= self.point_prob <= 1.0:
            raise ValueError(f"point_prob must be in [0, 1], got {self.point_prob}")
        if self.router_noise < 0 or not 0.0 < self.router_noise_anneal <= 1.0:
            raise ValueError(
                "router_noise must be >= 0 and router_noise_anneal in (0, 1], got "
                f"{self.router_noise}, {self.router_noise_anneal}"
            )
        if self.router_lr_scale <= 0:
            raise ValueError(f"router_lr_scale must be > 0, got {self.router_lr_scale}")
        object.__setattr__(self, "keep_ratios", tuple(float(r) for r in self.keep_ratios))
        object.__setattr__(
            self, "student_overrides", tuple((str(k), v) for k, v in self.student_overrides)
        )
