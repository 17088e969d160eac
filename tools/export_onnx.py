"""Export a model's image encoder (at a fixed keep ratio) and its prompt decoder to ONNX.

    biglittle-sam-export-onnx --model bl_b=bl_b.pth@0.25 --out-dir onnx/

writes ``onnx/bl_b_r0.25_encoder.onnx`` and ``onnx/bl_b_decoder.onnx``; ``--check`` then runs both
in onnxruntime and prints the largest difference from PyTorch. Needs the ``export`` extra:
``pip install "biglittle-sam[export]"``. docs/export.md shows how to run the pair.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from biglittle_sam.model_spec import SPEC_FORM, model_spec_arg


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    models = parser.add_argument_group("model")
    models.add_argument(
        "--model",
        required=True,
        type=model_spec_arg,
        metavar="SPEC",
        help=f"the model: {SPEC_FORM}; --checkpoint and --keep-ratio may give those parts",
    )
    models.add_argument(
        "--checkpoint", default=None, help="a checkpoint of that model (random weights if omitted)"
    )
    models.add_argument(
        "--sam-checkpoint",
        default=None,
        help="for bl_*: an official SAM checkpoint to inherit from (not distilled)",
    )
    models.add_argument(
        "--seed", type=int, default=None, help="seed of the weights no checkpoint provides"
    )
    export = parser.add_argument_group("export")
    export.add_argument(
        "--keep-ratio", type=float, default=None, help="big.LITTLE keep ratio in (0, 1]"
    )
    export.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17)")
    export.add_argument("--out-dir", default=None, help="output folder (default: current)")
    export.add_argument("--skip-decoder", action="store_true", help="export only the image encoder")
    export.add_argument(
        "--multimask",
        action="store_true",
        help="decoder returns all 4 masks, not only the best (return_single_mask=False)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="run the exported files in onnxruntime and print the max abs diff from PyTorch",
    )
    return parser


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Path]:
    args = build_parser().parse_args(argv)
    from biglittle_sam.build_sam import build_model_from_spec, get_keep_ratio
    from biglittle_sam.checkpoint import CheckpointError
    from biglittle_sam.export import (
        compare_image_encoder,
        compare_prompt_decoder,
        export_image_encoder,
        export_prompt_decoder,
    )
    from biglittle_sam.model_spec import spec_with

    options: Dict[str, Any] = {}
    if args.opset is not None:
        options["opset"] = args.opset
    out_dir = Path(args.out_dir) if args.out_dir is not None else Path(".")
    written: Dict[str, Path] = {}
    try:
        spec = spec_with(args.model, args.checkpoint, args.keep_ratio)
        seed = args.seed if args.seed is not None else 0
        sam = build_model_from_spec(spec, seed, sam_checkpoint=args.sam_checkpoint)
        ratio = spec.keep_ratio if spec.keep_ratio is not None else get_keep_ratio(sam)
        encoder_path = out_dir / f"{spec.name}_r{ratio:g}_encoder.onnx"
        written["encoder"] = export_image_encoder(
            sam, encoder_path, keep_ratio=spec.keep_ratio, **options
        )
        print(f"wrote {written['encoder']}")
        if not args.skip_decoder:
            decoder_options = dict(options)
            if args.multimask:
                decoder_options["return_single_mask"] = False
            written["decoder"] = export_prompt_decoder(
                sam, out_dir / f"{spec.name}_decoder.onnx", **decoder_options
            )
            print(f"wrote {written['decoder']}")
        if args.check:
            diff = compare_image_encoder(sam, written["encoder"])
            print(f"check: encoder max abs diff onnxruntime vs PyTorch = {diff:.3g}")
            if "decoder" in written:
                diff = compare_prompt_decoder(sam, written["decoder"])
                print(f"check: decoder max abs diff onnxruntime vs PyTorch = {diff:.3g}")
    except (CheckpointError, FileNotFoundError, ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    return written


if __name__ == "__main__":
    main()
