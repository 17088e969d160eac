"""Write a synthetic shapes dataset with exact masks (``biglittle-sam-make-shapes``).

    biglittle-sam-make-shapes --out-dir data/shapes --num-images 50
    biglittle-sam-eval --annotations data/shapes/coco/annotations/instances_shapes.json \\
        --images data/shapes/coco/val2017 --model vit_tiny

Writes COCO (polygons, RLE, crowd), LVIS-style and SA-1B-format annotations, and a noisy-box
"detector" results file for mask AP. See ``biglittle_sam.data.shapes`` for the layout.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Dict, Optional, Sequence, Tuple

from biglittle_sam.train.cli import add_old_spelling

__all__ = ["build_parser", "main"]


def _size(text: str) -> Tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"image size {text!r} must be WIDTHxHEIGHT, e.g. 160x120"
        ) from None
    return w, h


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="biglittle-sam-make-shapes",
        description=(
            "Write a synthetic shapes dataset (COCO, LVIS and SA-1B format) with exact masks."
        ),
    )
    parser.add_argument(
        "--out-dir", dest="out", default=None, help="output folder (gets coco/ and sa1b/; required)"
    )
    add_old_spelling(parser, "--out", "out")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing coco/ and sa1b/ (default: refuse, exit 2)",
    )
    draw = parser.add_argument_group("what to draw")
    draw.add_argument("--num-images", type=int, default=None, help="number of images (default 8)")
    draw.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    draw.add_argument(
        "--sizes",
        type=_size,
        nargs="+",
        default=None,
        metavar="WxH",
        help="image sizes, cycled over the images (default 160x120 120x160 200x200 144x96 256x192)",
    )
    draw.add_argument(
        "--min-shapes", type=int, default=None, help="shapes per image, at least (default 3)"
    )
    draw.add_argument(
        "--max-shapes", type=int, default=None, help="shapes per image, at most (default 7)"
    )
    draw.add_argument(
        "--crowd-every",
        type=int,
        default=None,
        help="every N-th image gets a crowd region (0: none; default 3)",
    )
    draw.add_argument(
        "--edge-cases",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a one-pixel object and a corner-cut shape in image 0 (default on)",
    )
    out = parser.add_argument_group("output")
    out.add_argument(
        "--formats",
        nargs="+",
        choices=["coco", "lvis", "sa1b"],
        default=None,
        help="formats to write (default: all three)",
    )
    out.add_argument(
        "--detections",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write a noisy-box detector results file for mask AP (default on)",
    )
    out.add_argument("--jpeg-quality", type=int, default=None, help="JPEG quality (default 95)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.out is None:
        parser.error("--out-dir is required: the output folder")
    from biglittle_sam.data.shapes import ShapesConfig, make_shapes_dataset

    given: Dict[str, Any] = {
        k: (tuple(v) if isinstance(v, list) else v)
        for k, v in vars(args).items()
        if v is not None and k not in ("out", "overwrite")
    }
    try:
        config = ShapesConfig(**given)
    except ValueError as e:
        parser.error(str(e))
    try:
        written = make_shapes_dataset(args.out, config, overwrite=args.overwrite)
    except FileExistsError as e:  # a usage error: the flags name a folder in use
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    print(
        f"wrote {written.num_images} images, {written.num_instances} instances under {written.root}"
    )
    for label, path in (
        ("COCO annotations", written.coco_annotations),
        ("COCO images", written.coco_images),
        ("LVIS annotations", written.lvis_annotations),
        ("LVIS image root", written.lvis_image_root),
        ("SA-1B folder", written.sa1b_dir),
        ("detections", written.detections),
    ):
        if path is not None:
            print(f"  {label}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
