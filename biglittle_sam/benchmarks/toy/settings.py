"""What the toy benchmark runs: its teacher, its shapes and its budgets.

Each field carries a one-line reason. How the values were chosen (the measurements behind each
recipe) is written up in ``docs/benchmarks/toy.md``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional, Tuple

from ..budgets import check_budgets

__all__ = ["ToyBenchmarkSettings", "TOY_TEACHER", "TOY_SHAPES"]

# The toy teacher: SAM's structure (ViT with windowed and global blocks, neck, prompt encoder, mask
# decoder) at 64 px with 8 px patches: an 8 x 8 grid in 2 x 2 windows of 4, two global blocks.
# The decoder is 64 wide so that its upscaled mask features have 8 channels.
TOY_TEACHER: Tuple[Tuple[str, Any], ...] = (
    ("img_size", 64),
    ("patch_size", 8),
    ("embed_dim", 64),
    ("depth", 4),
    ("num_heads", 2),
    ("window_size", 4),
    ("global_attn_indexes", (1, 3)),
    ("out_chans", 64),
    ("decoder_mlp_dim", 128),
    ("decoder_heads", 2),
    ("iou_head_hidden_dim", 64),
    ("mask_in_chans", 8),
)

# The shapes: small images (64-96 px, so the 64 px input keeps most detail), 2-5 objects of at
# least 8 px on textured backgrounds, no crowd regions.
TOY_SHAPES: Tuple[Tuple[str, Any], ...] = (
    ("sizes", ((96, 72), (72, 96), (80, 80), (96, 64))),
    ("min_shapes", 2),
    ("max_shapes", 5),
    ("min_extent", 8.0),
    ("crowd_every", 0),
    ("edge_cases", False),
    ("formats", ("coco",)),
    ("detections", False),
)


@dataclass(frozen=True)
class ToyBenchmarkSettings:
    """Sizes and budgets of the toy benchmark; the defaults take ~23 minutes on 2 CPU cores."""

    out_dir: str = "outputs/toy_benchmark"
    seed: int = 0  # data (train seed + 1, validation seed + 2), weights, prompts
    train_images: int = 1000  # shapes images the teacher trains on (made in ~2 s)
    # Shapes images the students distil on: the teacher's and more from the same generator
    # (None: the teacher's); phase 2 needs the variety more than phase 1.
    distill_images: Optional[int] = 8000
    val_images: int = 200  # shapes images to evaluate on (never trained on; ~700 objects)
    shapes: Tuple[Tuple[str, Any], ...] = TOY_SHAPES  # ShapesConfig fields of both splits
    teacher: Tuple[Tuple[str, Any], ...] = TOY_TEACHER  # vit_tiny config fields
    teacher_steps: int = 4000  # 32k images seen, ~12 of the ~23 minutes on 2 cores
    teacher_lr: float = 1e-3  # the best of 5e-4 / 1e-3 / 3e-3 at 1500 steps
    teacher_batch_size: int = 8  # images per teacher step (the distillation stages: batch_size)
    teacher_focal_weight: float = 2.0  # from scratch, SAM's 20:1 first collapses to empty masks
    student_little_dim: int = 16  # E-block width: C / 4
    student_little_heads: int = 2
    student_parts: str = "encoder"  # phase 1 on the whole encoder (P-blocks too): lowest error
    student_steps: int = 3000  # phase 1 plateaus here (6000 steps were no better)
    student_lr: float = 2e-3  # lower embedding error than 1e-3 or 3e-3
    phase2_steps: int = 1500  # 1000-2000 differ by noise; 0: phase 1 only
    phase2_lr: float = 5e-4  # 1e-3 was no better
    phase2_keep_ratios: Tuple[float, ...] = (0.25, 0.5)  # the target ratios
    phase2_mask_weight: float = 10.0  # against the embedding loss's weight 1 + 1
    phase2_point_prob: float = 0.75  # share of objects prompted by a point (the rest: a box)
    phase2_router_lr_scale: float = 5.0  # the routers' lr: this times phase2_lr
    # The teacher's mask probabilities, not its binary masks, as targets (off: no gain measured).
    phase2_soft_targets: bool = False
    # Phase 2's model as a moving average of its weights (0: off; no gain measured).
    phase2_ema_decay: float = 0.0
    routers_steps: int = 1000  # the routers-only ablation
    scratch_steps: Optional[int] = None  # the no-teacher-init ablation; None: student_steps
    scratch_lr: float = 2e-3
    keep_ratios: Tuple[float, ...] = (0.1, 0.25, 0.5, 1.0)  # drawn per distillation step
    eval_ratios: Tuple[float, ...] = (1.0, 0.5, 0.25, 0.1)  # rows of the table
    batch_size: int = 8
    processes: Optional[int] = None  # gloo processes per training stage; None: min(2, CPUs)
    threads: int = 1  # torch threads per process (tiny ops are fastest on one)
    num_workers: int = 0  # data loader processes per training process
    assets_dir: Optional[str] = None  # also write fp16 teacher / student and their description
    progress: bool = True
    resume: bool = False  # continue an interrupted run: finished stages are reused
    command: str = ""  # the command line that ran this, recorded in the outputs

    def __post_init__(self) -> None:
        check_budgets(
            self,
            (
                "train_images",
                "val_images",
                "teacher_steps",
                "teacher_batch_size",
                "student_steps",
                "routers_steps",
                "batch_size",
            ),
        )
        object.__setattr__(self, "teacher", tuple((str(k), v) for k, v in self.teacher))
        object.__setattr__(self, "shapes", tuple((str(k), v) for k, v in self.shapes))
        object.__setattr__(self, "keep_ratios", tuple(float(r) for r in self.keep_ratios))
        object.__setattr__(
            self, "phase2_keep_ratios", tuple(float(r) for r in self.phase2_keep_ratios)
        )
        object.__setattr__(self, "eval_ratios", tuple(float(r) for r in self.eval_ratios))

    @property
    def distill_count(self) -> int:
        """Shapes images made for training: the teacher's first, then the students' others."""
        return max(self.train_images, self.distill_images or 0)

    @property
    def nproc(self) -> int:
        """Gloo processes per training stage."""
        if self.processes is not None:
            return max(1, self.processes)
        return max(1, min(2, os.cpu_count() or 1))
