"""Fine-tune any registry model (plain SAM or big.LITTLE) on COCO- or SA-1B-format masks.

    biglittle-sam-finetune --model vit_b --checkpoint sam_vit_b_01ec64.pth \
        --images train2017 --annotations instances_train2017.json --train-parts decoder \
        --steps 5000 --batch-size 16 --out-dir outputs/ft_vit_b
    torchrun --nproc_per_node=4 tools/finetune.py ... --resume auto
    biglittle-sam-finetune --config experiments/proxy/configs/teacher.yaml --steps 100

Losses: focal + Dice + IoU-head MSE (SAM's); prompts: boxes and points from the masks, with
refinement clicks. Flags override the --config recipe; what neither gives keeps the library's
defaults (``biglittle_sam.train.FinetuneSettings`` and ``TrainSettings``). The resolved settings are
written to <out-dir>/settings.json.
"""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

from biglittle_sam.train.cli import add_task_arguments, run_cli, task_settings_from_args
from biglittle_sam.train.finetune import FinetuneSettings, run_finetune
from biglittle_sam.train.loop import TrainResult

# FinetuneSettings' fields in the argument groups of --help, in their order there.
GROUPS = (
    (
        "data",
        ("images", "annotations", "dataset", "limit", "max_instances", "hflip", "strict"),
    ),
    ("model", ("model", "checkpoint", "sam_checkpoint", "overrides", "train_parts", "keep_ratios")),
    (
        "loss and prompts",
        (
            "point_prob",
            "refine_clicks",
            "mask_input_prob",
            "focal_weight",
            "dice_weight",
            "iou_weight",
        ),
    ),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="biglittle-sam-finetune",
        description="Fine-tune SAM or big.LITTLE SAM on COCO / SA-1B masks (focal + Dice + IoU).",
    )
    return add_task_arguments(parser, FinetuneSettings, GROUPS, FinetuneSettings(images="-"))


def settings_from_args(args: argparse.Namespace) -> FinetuneSettings:
    """Defaults, then the ``--config`` recipe, then the flags given."""
    return task_settings_from_args(
        args, FinetuneSettings, required=("images",), overrides="overrides"
    )


def main(argv: Optional[Sequence[str]] = None) -> TrainResult:
    args = build_parser().parse_args(argv)
    settings = run_cli(lambda: settings_from_args(args))
    return run_cli(lambda: run_finetune(settings))


if __name__ == "__main__":
    main()
