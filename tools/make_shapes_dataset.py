"""Write a synthetic shapes dataset with exact masks (``biglittle-sam-make-shapes``).

    biglittle-sam-make-shapes --out-dir data/shapes --num-images 50
    biglittle-sam-make-shapes --out-dir data/tokens --preset token-sized --img-size 256 \
        --patch-size 8 --num-images 200 --seed 3     # objects sized in tokens as SAM sees COCO
    biglittle-sam-eval --annotations data/shapes/coco/annotations/instances_shapes.json \\
        --images data/shapes/coco/val2017 --model vit_tiny

Writes COCO (polygons, RLE, crowd), LVIS-style and SA-1B-format annotations, and a noisy-box
"detector" results file for mask AP. See ``biglittle_sam.data.shapes`` for the layout.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Optional, Sequence

from biglittle_sam.data.shapes import (
    ShapesConfig,
    describe_shapes,
    make_shapes_dataset,
    token_sized_shapes_config,
)
from biglittle_sam.runtime.cli import add_old_spelling, add_settings_flags, settings_kwargs

__all__ = ["build_parser", "main"]

# ShapesConfig's fields with a flag, by group (the others keep their defaults).
_DRAW = ("num_images", "seed", "sizes", "min_shapes", "max_shapes", "crowd_every", "edge_cases")
_OUTPUT = ("formats", "detections", "jpeg_quality")


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
    preset = parser.add_argument_group("preset")
    preset.add_argument(
        "--preset",
        choices=("default", "token-sized"),
        default="default",
        help="token-sized: textured images --img-size px on the long side, 3-9 objects sized in "
        "tokens of --patch-size px as SAM sees COCO (small 1-3 tokens across, medium 3-10, large "
        "above; 41 / 34 / 25%%), COCO format only; the flags below override it (default: default)",
    )
    preset.add_argument(
        "--img-size", type=int, default=256, help="token-sized: long side (default: 256)"
    )
    preset.add_argument(
        "--patch-size", type=int, default=8, help="token-sized: token px (default: 8)"
    )
    sizes = " ".join(f"{w}x{h}" for w, h in ShapesConfig().sizes)
    draw = parser.add_argument_group("what to draw")
    add_settings_flags(draw, ShapesConfig, only=_DRAW, defaults={"sizes": sizes})
    add_settings_flags(parser.add_argument_group("output"), ShapesConfig, only=_OUTPUT)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.out is None:
        parser.error("--out-dir is required: the output folder")
    try:
        config = _config(args)
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
    if args.preset == "token-sized" and written.coco_annotations is not None:
        info = describe_shapes(written.coco_annotations, args.patch_size)
        shares = ", ".join(f"{k} {v:.0%}" for k, v in info["bin_shares"].items())
        print(f"  sizes in tokens: {shares}; objects cover {info['object_share']:.0%} of an image")
    return 0


def _config(args: argparse.Namespace) -> ShapesConfig:
    """The preset's config with the given flags applied (ValueError: a bad value)."""
    given = settings_kwargs(args, ShapesConfig)
    if args.preset == "default":
        return ShapesConfig(**given)
    num, seed = given.pop("num_images", 200), given.pop("seed", 0)
    base = token_sized_shapes_config(args.img_size, args.patch_size, num, seed)
    return dataclasses.replace(base, **given)


if __name__ == "__main__":
    sys.exit(main())
