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

    # several processes: images are sharded, numbers equal a single-process run
    torchrun --nproc_per_node=8 -m biglittle_sam_tools.eval_miou ...

Every flag defaults to the library's value (``biglittle_sam.eval.EvalSettings``); only the flags
given are passed on.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Dict, List, Optional, Sequence

from biglittle_sam.model_spec import SPEC_FORM, ModelSpec, model_spec_arg

__all__ = ["build_parser", "main"]


def _examples() -> str:
    """The examples of the module docstring, for ``--help``."""
    text = (__doc__ or "").split("Examples:", 1)[-1].split("Every flag", 1)[0]
    return "examples:\n" + text.rstrip()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="biglittle-sam-eval",
        description=(
            "Score SAM and big.LITTLE SAM masks: mIoU with box / click prompts (COCO, LVIS,\n"
            "SA-1B), mask AP from detector boxes, or embedding fidelity against a teacher.\n"
            "Writes <out-dir>/<name>.json, .md and .png."
        ),
        epilog=_examples(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--task",
        choices=["miou", "ap", "fidelity"],
        default=None,
        help="what to measure (default: ap with --detections, fidelity with --teacher, else miou)",
    )

    models = parser.add_argument_group("models")
    models.add_argument(
        "--model",
        dest="models",
        action="append",
        type=model_spec_arg,
        metavar="SPEC",
        default=None,
        help=f"a model to evaluate, repeatable (at least one required): {SPEC_FORM}",
    )
    models.add_argument(
        "--teacher",
        default=None,
        type=model_spec_arg,
        metavar="SPEC",
        help="teacher model spec for --task fidelity (default: none)",
    )
    models.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA when available), cpu, cuda or cuda:N (default: auto)",
    )
    models.add_argument(
        "--int8",
        action="store_true",
        default=None,
        help="run every --model's image encoder in dynamic int8 (CPU only; the --teacher of "
        "task fidelity stays fp32, so the same spec as --teacher measures int8's error) "
        "(default: fp32)",
    )
    models.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads per process (torchrun workers default to 1; use --threads 1 for a "
        "single-process run that must match them bit for bit)",
    )
    models.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seeds SA-1B instance sampling, EdgeSAM random clicks and weights a checkpoint lacks "
        "(default 0)",
    )

    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset",
        choices=["coco", "lvis", "sa1b", "folder"],
        default=None,
        help="default: from --annotations (lvis if its name says so, else coco) or the SA-1B files",
    )
    data.add_argument(
        "--annotations",
        default=None,
        metavar="JSON",
        help="COCO instances_*.json or LVIS json (default: none; SA-1B and folders have none)",
    )
    data.add_argument(
        "--images",
        default=None,
        metavar="DIR",
        help="image folder (COCO: val2017/; LVIS: the folder holding train2017/ and val2017/; "
        "SA-1B: the folder of sa_<id>.jpg + .json; fidelity: any image folder; required)",
    )
    data.add_argument(
        "--sa1b-instances",
        type=int,
        default=None,
        metavar="N",
        help="sample N instances per SA-1B image (EdgeSAM's SA-1K uses 64; default: all)",
    )
    data.add_argument(
        "--image-list",
        default=None,
        metavar="TXT",
        help="SA-1B held-out image names, one a line (default: every image)",
    )
    data.add_argument(
        "--include-crowd",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="score crowd annotations (default: yes for evit, no for edgesam)",
    )
    data.add_argument(
        "--min-area",
        type=float,
        default=None,
        help="skip (and count) annotations with a smaller area (default 1)",
    )
    data.add_argument(
        "--limit", type=int, default=None, metavar="N", help="first N images only (default: all)"
    )
    data.add_argument(
        "--strict",
        action="store_true",
        default=None,
        help="stop at a missing, corrupt or mismatched image instead of skipping and listing it "
        "(default: skip)",
    )

    prompts = parser.add_argument_group("prompts")
    prompts.add_argument(
        "--prompt",
        dest="prompts",
        nargs="+",
        choices=["box", "click"],
        default=None,
        help="prompt kinds (default: box click)",
    )
    prompts.add_argument(
        "--clicks",
        type=int,
        nargs="+",
        default=None,
        metavar="K",
        help="click counts (default 1 3 5)",
    )
    prompts.add_argument(
        "--protocol",
        choices=["evit", "edgesam"],
        default=None,
        help="evit (default): interior-most clicks, multimask best; edgesam: single mask, crowd "
        "dropped, seeded random refinement clicks",
    )
    prompts.add_argument(
        "--mask-choice",
        choices=["best", "single"],
        default=None,
        help="best: multimask and highest predicted IoU; single: single-mask output "
        "(default: the protocol's)",
    )
    prompts.add_argument(
        "--detections",
        default=None,
        metavar="JSON",
        help="COCO results json with boxes (mask AP; default: none)",
    )
    prompts.add_argument(
        "--max-detections", type=int, default=None, help="boxes prompted per image (default 100)"
    )

    output = parser.add_argument_group("output")
    output.add_argument("--out-dir", default=None, help="output folder (default outputs/eval)")
    output.add_argument("--name", default=None, help="output file stem (default <task>_<dataset>)")
    output.add_argument(
        "--plot-x",
        choices=["latency", "gmacs"],
        default=None,
        help="x axis of the plot (default latency: measured encoder ms)",
    )
    output.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar (default: on)",
    )
    output.add_argument(
        "--save-masks",
        action="store_true",
        default=None,
        help="mask AP: also write each model's COCO segm results json (default: off)",
    )
    return parser


_TUPLES = ("models", "prompts", "clicks")


def settings_kwargs(args: argparse.Namespace) -> Dict[str, Any]:
    """The flags that were given, as ``EvalSettings`` keyword arguments (model specs as the text
    the user wrote; argparse has checked them already)."""
    out: Dict[str, Any] = {}
    for key, value in vars(args).items():
        if value is None:
            continue
        if key == "models":
            value = [spec.text for spec in value]
        elif isinstance(value, ModelSpec):
            value = value.text
        out[key] = tuple(value) if key in _TUPLES else value
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from biglittle_sam.eval import EvalSettings, run_evaluation

    if not args.models:
        parser.error(f"at least one --model is needed: {SPEC_FORM}")
    try:
        settings = EvalSettings(**settings_kwargs(args)).resolved()
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
