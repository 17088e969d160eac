"""Evaluate SAM-style models on COCO / LVIS / SA-1B masks (``biglittle-sam-eval``).

Examples:

    # mIoU with box and 1/3/5-click prompts, three models side by side on the same prompts
    biglittle-sam-eval --annotations coco/annotations/instances_val2017.json \\
        --images coco/val2017 \\
        --model vit_b=sam_vit_b_01ec64.pth --model bl_b=bl_b.pth@0.25 --model bl_b=bl_b.pth@0.5

    # the EdgeSAM protocol on SA-1B, 64 instances per image
    biglittle-sam-eval --dataset sa1b --images sa1b_val --sa1b-instances 64 --protocol edgesam \\
        --model bl_b=bl_b.pth@0.25

    # mask AP from a detector's boxes
    biglittle-sam-eval --task ap --annotations instances_val2017.json --images val2017 \\
        --detections detections.json --model bl_b=bl_b.pth@0.25

    # embedding fidelity of a student against its teacher on a folder of images
    biglittle-sam-eval --task fidelity --images some_images/ --teacher vit_b=sam_vit_b_01ec64.pth \\
        --model bl_b=bl_b.pth@0.25

    # your own photos, no labels: masks at keep ratio 0.5 against the same checkpoint at 1
    # (a 16 x 16 grid of clicks; --agreement-prompts amg compares automatic masks instead)
    biglittle-sam-eval --images my_photos/ --reference bl_b=bl_b.pth@1 --model bl_b=bl_b.pth@0.5

    # int8 against fp32 on the same photos (the --reference stays fp32)
    biglittle-sam-eval --images my_photos/ --reference bl_b=bl_b.pth@0.5 \\
        --model bl_b=bl_b.pth@0.5 --int8 --device cpu

    # several processes: images are sharded, numbers equal a single-process run
    torchrun --nproc_per_node=8 -m biglittle_sam_tools.eval_miou ...

Every flag defaults to the library's value (``biglittle_sam.eval.EvalSettings``); only the flags
given are passed on.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional, Sequence

from biglittle_sam.eval import EvalSettings, run_evaluation
from biglittle_sam.model_spec import SPEC_FORM
from biglittle_sam.runtime.cli import add_settings_flags, settings_kwargs

__all__ = ["build_parser", "main"]


def _examples() -> str:
    """The examples of the module docstring, for ``--help``."""
    text = (__doc__ or "").split("Examples:", 1)[-1].split("Every flag", 1)[0]
    return "examples:\n" + text.rstrip()


# The flags of each --help group, in the order shown; name, help, choices and default come from
# the ``EvalSettings`` field.
_GROUPS = {
    "models": ("models", "teacher", "reference", "device", "int8", "threads", "seed"),
    "data": (
        "dataset",
        "annotations",
        "images",
        "sa1b_instances",
        "image_list",
        "include_crowd",
        "min_area",
        "limit",
        "strict",
    ),
    "prompts": ("prompts", "clicks", "protocol", "mask_choice", "detections", "max_detections"),
    "agreement (no labels)": (
        "agreement_prompts",
        "points_per_side",
        "iou_match",
        "pred_iou_thresh",
        "stability_score_thresh",
    ),
    "output": ("out_dir", "name", "plot_x", "progress", "save_masks"),
}


def build_parser() -> argparse.ArgumentParser:
    """The ``biglittle-sam-eval`` flags, one per ``EvalSettings`` field."""
    parser = argparse.ArgumentParser(
        prog="biglittle-sam-eval",
        description=(
            "Score SAM and big.LITTLE SAM masks: mIoU with box / click prompts (COCO, LVIS,\n"
            "SA-1B), mask AP from detector boxes, embedding fidelity against a teacher, or\n"
            "agreement with a reference model's masks on any folder of images (no labels).\n"
            "Writes <out-dir>/<name>.json, .md and .png."
        ),
        epilog=_examples(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_settings_flags(parser, EvalSettings, only=["task"])
    for title, names in _GROUPS.items():
        add_settings_flags(parser.add_argument_group(title), EvalSettings, only=names)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.models:
        parser.error(f"at least one --model is needed: {SPEC_FORM}")
    try:
        settings = EvalSettings(**settings_kwargs(args, EvalSettings)).resolved()
    except ValueError as e:
        parser.error(str(e))
    try:
        result = run_evaluation(settings)
    except (ValueError, FileNotFoundError) as e:
        # DatasetError, ModelSpecError and CheckpointError are ValueErrors with a full message.
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 1
    if result is not None:
        outputs = result["outputs"]
        print(open(outputs["markdown"], encoding="utf-8").read())
        written: List[str] = [outputs[k] for k in ("json", "markdown", "plot") if k in outputs]
        print("wrote " + ", ".join(written))
        if "plot_error" in outputs:
            print(outputs["plot_error"], file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
