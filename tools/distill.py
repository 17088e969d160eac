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
from biglittle_sam.train.cli import (
    add_config_argument,
    add_train_arguments,
    describe_defaults,
    given,
    parse_overrides,
    run_cli,
    settings_defaults,
    train_settings_from_args,
)
from biglittle_sam.train.loop import TrainResult
from biglittle_sam.train.models import STUDENT_INITS
from biglittle_sam.train.parts import PARTS
from biglittle_sam.train.recipes import load_recipe, merge_settings, write_settings

_FIELDS = (
    "cache",
    "images",
    "annotations",
    "dataset",
    "limit",
    "student",
    "teacher_checkpoint",
    "sam_checkpoint",
    "init",
    "init_checkpoint",
    "phase",
    "train_parts",
    "mse_weight",
    "cosine_weight",
    "mask_weight",
    "iou_weight",
    "max_instances",
    "point_prob",
    "refine_click",
    "soft_targets",
    "router_noise",
    "router_noise_anneal",
    "router_lr_scale",
)


# The library's defaults, for --help (the flags default to None: only the ones given are used).
_DEFAULTS = {
    **settings_defaults(DistillSettings(cache="-", images="-")),
    "override": (),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="biglittle-sam-distill",
        description="Distil a big.LITTLE SAM student from cached teacher embeddings.",
    )
    add_config_argument(parser)
    data = parser.add_argument_group("data")
    data.add_argument(
        "--cache",
        default=None,
        help="teacher embedding cache folder (required here or in --config)",
    )
    data.add_argument(
        "--images", default=None, help="the images the cache was made from (required, as --cache)"
    )
    data.add_argument("--annotations", default=None, help="COCO / LVIS json (phase 2 masks)")
    data.add_argument(
        "--dataset",
        choices=["coco", "lvis", "sa1b", "folder"],
        default=None,
        help="the images' format (default: from the files)",
    )
    data.add_argument("--limit", type=int, default=None, help="only the first N images")
    data.add_argument(
        "--allow-partial-cache", action="store_true", help="train on the cached images only"
    )
    data.add_argument("--strict", action="store_true", help="stop at an unreadable image")
    model = parser.add_argument_group("student and teacher")
    model.add_argument("--student", default=None, help="bl_b (default), bl_l, bl_h, bl_tiny")
    model.add_argument("--teacher-checkpoint", default=None, help="the SAM the cache came from")
    model.add_argument(
        "--sam-checkpoint", default=None, help="SAM the student inherits from (default teacher)"
    )
    model.add_argument(
        "--init",
        choices=STUDENT_INITS,
        default=None,
        help="teacher: inherit SAM's blocks; none: a random encoder (ablation)",
    )
    model.add_argument("--init-checkpoint", default=None, help="start from a big.LITTLE model")
    model.add_argument(
        "--override",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="student config field, e.g. little_dim=192 (repeatable)",
    )
    model.add_argument("--no-save-init", action="store_true", help="do not write init.pth")
    model.add_argument(
        "--train-parts", default=None, help=f"comma-separated subset of {', '.join(PARTS)}"
    )
    model.add_argument(
        "--keep-ratios", type=float, nargs="+", default=None, help="one drawn per step"
    )
    loss = parser.add_argument_group("loss")
    loss.add_argument(
        "--phase",
        type=int,
        choices=[1, 2],
        default=None,
        help="1: embeddings; 2: embeddings and the teacher's masks under prompts",
    )
    loss.add_argument("--mse-weight", type=float, default=None, help="embedding MSE")
    loss.add_argument("--cosine-weight", type=float, default=None, help="embedding cosine distance")
    loss.add_argument("--mask-weight", type=float, default=None, help="phase 2")
    loss.add_argument(
        "--iou-weight", type=float, default=None, help="phase 2: predicted IoUs vs the teacher's"
    )
    loss.add_argument("--max-instances", type=int, default=None, help="phase 2")
    loss.add_argument("--point-prob", type=float, default=None, help="phase 2")
    loss.add_argument(
        "--refine-click", action=argparse.BooleanOptionalAction, default=None, help="phase 2"
    )
    loss.add_argument(
        "--soft-targets",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="phase 2: the teacher's mask probabilities, not its binary masks",
    )
    router = parser.add_argument_group("router training")
    router.add_argument(
        "--router-noise", type=float, default=None, help="Gumbel exploration scale (0: off)"
    )
    router.add_argument(
        "--router-noise-anneal", type=float, default=None, help="share of steps to decay it"
    )
    router.add_argument("--router-lr-scale", type=float, default=None, help="router lr x this")
    add_train_arguments(parser)
    return describe_defaults(parser, _DEFAULTS)


def settings_from_args(args: argparse.Namespace) -> DistillSettings:
    """Defaults, then the ``--config`` recipe, then the flags given."""
    changes = given(args, _FIELDS)
    if args.keep_ratios is not None:
        changes["keep_ratios"] = tuple(args.keep_ratios)
    if args.override:
        changes["student_overrides"] = parse_overrides(args.override)
    for flag in ("allow_partial_cache", "strict"):
        if getattr(args, flag):
            changes[flag] = True
    if args.no_save_init:
        changes["save_init"] = False
    recipe = load_recipe(args.config, DistillSettings) if args.config else {}
    for name in ("cache", "images"):
        if not changes.get(name) and not recipe.get(name):
            raise ValueError(f"--{name} is required (or '{name}' in the --config file)")
    return merge_settings(
        DistillSettings, recipe, changes, lambda train: train_settings_from_args(args, train)
    )


def main(argv: Optional[Sequence[str]] = None) -> TrainResult:
    args = build_parser().parse_args(argv)
    settings = run_cli(lambda: settings_from_args(args))
    try:
        return run_cli(lambda: run_distillation(settings))
    finally:
        write_settings(settings)


if __name__ == "__main__":
    main()
