"""Fine-tune any registry model (plain SAM or big.LITTLE) on COCO- or SA-1B-format masks.

    biglittle-sam-finetune --model vit_b --checkpoint sam_vit_b_01ec64.pth \
        --images train2017 --annotations instances_train2017.json --train-parts decoder \
        --steps 5000 --batch-size 16 --out-dir outputs/ft_vit_b
    torchrun --nproc_per_node=4 tools/finetune.py ... --resume auto
    biglittle-sam-finetune --config configs/toy/teacher.yaml --steps 100   # a recipe and a flag

Losses: focal + Dice + IoU-head MSE (SAM's); prompts: boxes and points from the masks, with
refinement clicks. Flags override the --config recipe; what neither gives keeps the library's
defaults (``biglittle_sam.train.FinetuneSettings`` and ``TrainSettings``). The resolved settings are
written to <out-dir>/settings.json.
"""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

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
from biglittle_sam.train.finetune import FinetuneSettings, run_finetune
from biglittle_sam.train.loop import TrainResult
from biglittle_sam.train.parts import PARTS
from biglittle_sam.train.recipes import load_recipe, merge_settings, write_settings

_FIELDS = (
    "images",
    "annotations",
    "dataset",
    "limit",
    "model",
    "checkpoint",
    "sam_checkpoint",
    "train_parts",
    "max_instances",
    "point_prob",
    "refine_clicks",
    "mask_input_prob",
    "focal_weight",
    "dice_weight",
    "iou_weight",
    "hflip",
)


# The library's defaults, for --help (the flags default to None: only the ones given are used).
_DEFAULTS = {**settings_defaults(FinetuneSettings(images="-")), "override": ()}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="biglittle-sam-finetune",
        description="Fine-tune SAM or big.LITTLE SAM on COCO / SA-1B masks (focal + Dice + IoU).",
    )
    add_config_argument(parser)
    data = parser.add_argument_group("data")
    data.add_argument(
        "--images",
        default=None,
        help="COCO image folder or SA-1B folder (required here or in --config)",
    )
    data.add_argument("--annotations", default=None, help="COCO / LVIS instance json")
    data.add_argument(
        "--dataset",
        choices=["coco", "lvis", "sa1b"],
        default=None,
        help="the annotations' format (default: from the files)",
    )
    data.add_argument("--limit", type=int, default=None, help="only the first N images")
    data.add_argument("--max-instances", type=int, default=None, help="objects per image")
    data.add_argument(
        "--hflip",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="flip half of the images horizontally",
    )
    data.add_argument("--strict", action="store_true", help="stop at an unreadable image")
    model = parser.add_argument_group("model")
    model.add_argument("--model", default=None, help="registry name (default vit_b)")
    model.add_argument("--checkpoint", default=None, help="the model's checkpoint")
    model.add_argument(
        "--sam-checkpoint", default=None, help="big.LITTLE: official SAM file to inherit from"
    )
    model.add_argument(
        "--override",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="config field, e.g. embed_dim=128 (repeatable)",
    )
    model.add_argument(
        "--train-parts", default=None, help=f"comma-separated subset of {', '.join(PARTS)}"
    )
    model.add_argument(
        "--keep-ratios", type=float, nargs="+", default=None, help="big.LITTLE: drawn per step"
    )
    loss = parser.add_argument_group("loss and prompts")
    loss.add_argument("--point-prob", type=float, default=None, help="share of point prompts")
    loss.add_argument("--refine-clicks", type=int, default=None, help="clicks after the first")
    loss.add_argument(
        "--mask-input-prob", type=float, default=None, help="refinement rounds with the last mask"
    )
    loss.add_argument("--focal-weight", type=float, default=None, help="focal loss weight")
    loss.add_argument("--dice-weight", type=float, default=None, help="Dice loss weight")
    loss.add_argument(
        "--iou-weight", type=float, default=None, help="MSE of the IoU head against the real IoU"
    )
    add_train_arguments(parser)
    return describe_defaults(parser, _DEFAULTS)


def settings_from_args(args: argparse.Namespace) -> FinetuneSettings:
    """Defaults, then the ``--config`` recipe, then the flags given."""
    changes = given(args, _FIELDS)
    if args.keep_ratios is not None:
        changes["keep_ratios"] = tuple(args.keep_ratios)
    if args.override:
        changes["overrides"] = parse_overrides(args.override)
    if args.strict:
        changes["strict"] = True
    recipe = load_recipe(args.config, FinetuneSettings) if args.config else {}
    if not changes.get("images") and not recipe.get("images"):
        raise ValueError("--images is required (or 'images' in the --config file)")
    return merge_settings(
        FinetuneSettings, recipe, changes, lambda train: train_settings_from_args(args, train)
    )


def main(argv: Optional[Sequence[str]] = None) -> TrainResult:
    args = build_parser().parse_args(argv)
    settings = run_cli(lambda: settings_from_args(args))
    try:
        return run_cli(lambda: run_finetune(settings))
    finally:
        write_settings(settings)


if __name__ == "__main__":
    main()
