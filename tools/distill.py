"""Distil a big.LITTLE student from its SAM teacher (phase 1: embeddings; phase 2: masks).

    biglittle-sam-distill --cache cache/vit_b --images sa1b/ --student bl_b \
        --teacher-checkpoint sam_vit_b_01ec64.pth --steps 20000 --batch-size 64 \
        --out-dir outputs/bl_b
    torchrun --nproc_per_node=8 tools/distill.py ... --resume auto
    biglittle-sam-distill --config configs/bl_b_sa1b.yaml --steps 5000   # a recipe and a flag
    biglittle-sam-distill --phase 2 --init-checkpoint outputs/bl_b/model.pth \
        --annotations instances_train2017.json ...

Flags override the --config recipe; what neither gives keeps the library's defaults
(``biglittle_sam.distill.DistillSettings`` and ``biglittle_sam.train.TrainSettings``). The resolved
settings are written to <out-dir>/settings.json.
"""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

from biglittle_sam.distill.distill import DistillSettings, run_distillation
from biglittle_sam.train.cli import add_task_arguments, run_cli, task_settings_from_args
from biglittle_sam.train.loop import TrainResult

# DistillSettings' fields in the argument groups of --help, in their order there.
GROUPS = (
    (
        "data",
        ("cache", "images", "annotations", "dataset", "limit", "allow_partial_cache", "strict"),
    ),
    (
        "student and teacher",
        (
            "student",
            "teacher_checkpoint",
            "sam_checkpoint",
            "init",
            "init_checkpoint",
            "student_overrides",
            "save_init",
            "train_parts",
            "keep_ratios",
        ),
    ),
    (
        "loss",
        (
            "phase",
            "mse_weight",
            "cosine_weight",
            "mask_weight",
            "iou_weight",
            "max_instances",
            "point_prob",
            "refine_click",
            "soft_targets",
        ),
    ),
    ("router training", ("router_noise", "router_noise_anneal", "router_lr_scale")),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="biglittle-sam-distill",
        description="Distil a big.LITTLE SAM student from cached teacher embeddings.",
    )
    return add_task_arguments(
        parser, DistillSettings, GROUPS, DistillSettings(cache="-", images="-")
    )


def settings_from_args(args: argparse.Namespace) -> DistillSettings:
    """Defaults, then the ``--config`` recipe, then the flags given."""
    return task_settings_from_args(
        args, DistillSettings, required=("cache", "images"), overrides="student_overrides"
    )


def main(argv: Optional[Sequence[str]] = None) -> TrainResult:
    args = build_parser().parse_args(argv)
    settings = run_cli(lambda: settings_from_args(args))
    return run_cli(lambda: run_distillation(settings))


if __name__ == "__main__":
    main()
