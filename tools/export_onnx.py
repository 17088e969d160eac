"""Export a model's image encoder (at a fixed keep ratio) and its prompt decoder to ONNX.

    biglittle-sam-export-onnx --model bl_b=bl_b.pth@0.25 --out-dir onnx/

writes ``onnx/bl_b_r0.25_encoder.onnx`` and ``onnx/bl_b_decoder.onnx``; ``--quantize-out`` adds
int8 copies (``..._int8.onnx``); ``--check`` then runs every file in onnxruntime against PyTorch
and exits with status 1 when one is beyond its tolerance. The decoder options are those of
``segment_anything``'s ``scripts/export_onnx_model.py``, with its defaults. Needs the ``export``
extra: ``pip install "biglittle-sam[export]"``. docs/export.md shows how to run the pair.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from biglittle_sam.model_spec import SPEC_FORM, model_spec_arg
from biglittle_sam.train.cli import run_cli

# Kept equal to biglittle_sam.export.onnx.FP32_TOLERANCE / INT8_MIN_COSINE (checked by a test);
# written out so that --help does not import torch.
FP32_TOLERANCE = 1e-3
INT8_MIN_COSINE = 0.99


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="biglittle-sam-export-onnx", description=__doc__.split("\n")[0]
    )
    models = parser.add_argument_group("model")
    models.add_argument(
        "--model",
        required=True,
        type=model_spec_arg,
        metavar="SPEC",
        help=f"the model: {SPEC_FORM}; --checkpoint and --keep-ratio may give those parts",
    )
    models.add_argument(
        "--checkpoint",
        default=None,
        help="a checkpoint of that model (default: none, random weights)",
    )
    models.add_argument(
        "--sam-checkpoint",
        default=None,
        help="for bl_*: an official SAM checkpoint to inherit from (not distilled; default: none)",
    )
    models.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed of the weights no checkpoint provides (default 0)",
    )
    export = parser.add_argument_group("export")
    export.add_argument(
        "--keep-ratio",
        type=float,
        default=None,
        help="big.LITTLE keep ratio in (0, 1] (default: the model's)",
    )
    export.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17)")
    export.add_argument("--out-dir", default=None, help="output folder (default: current)")
    export.add_argument(
        "--skip-decoder", action="store_true", help="export only the image encoder (default: both)"
    )
    export.add_argument(
        "--return-single-mask",
        action="store_true",
        help="decoder returns only the best mask instead of all 4 (default: all 4, as upstream)",
    )
    export.add_argument(
        "--multimask",
        action="store_true",
        help="decoder returns all 4 masks: the default now, kept for old command lines",
    )
    export.add_argument(
        "--use-stability-score",
        action="store_true",
        help="decoder's iou_predictions are the masks' stability scores (offset 1.0) instead of "
        "the predicted IoU (default: off)",
    )
    export.add_argument(
        "--return-extra-metrics",
        action="store_true",
        help="decoder also returns stability_scores and areas of the masks (default: off)",
    )
    export.add_argument(
        "--gelu-approximate",
        action="store_true",
        help="export GELU as its tanh approximation, for runtimes with a slow or missing Erf "
        "(default: exact)",
    )
    export.add_argument(
        "--quantize-out",
        action="store_true",
        help="also write a dynamic 8-bit copy of each file (onnxruntime quantize_dynamic) as "
        "<name>_int8.onnx beside it (default: off)",
    )
    export.add_argument(
        "--quantize-weight-type",
        choices=("int8", "uint8"),
        default="int8",
        help="weight type of --quantize-out; upstream uses uint8 (default: %(default)s)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="run every exported file in onnxruntime against PyTorch; exit 1 when an fp32 file "
        "is beyond --check-tolerance or an int8 file below cosine "
        f"{INT8_MIN_COSINE} (default: off)",
    )
    parser.add_argument(
        "--check-tolerance",
        type=float,
        default=FP32_TOLERANCE,
        help="largest max abs difference --check accepts for fp32 files (default: %(default)g)",
    )
    return parser


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Path]:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.return_single_mask and args.multimask:
        parser.error("--return-single-mask and --multimask contradict each other; give one")
    if not args.check_tolerance > 0:
        parser.error(f"--check-tolerance must be a positive number, got {args.check_tolerance}")
    from biglittle_sam.build_sam import build_model_from_spec, get_keep_ratio
    from biglittle_sam.export import (
        check_image_encoder,
        check_prompt_decoder,
        export_image_encoder,
        export_prompt_decoder,
        quantize_onnx,
    )
    from biglittle_sam.model_spec import spec_with

    options: Dict[str, Any] = {"gelu_approximate": args.gelu_approximate}
    if args.opset is not None:
        options["opset"] = args.opset
    out_dir = Path(args.out_dir) if args.out_dir is not None else Path(".")
    written: Dict[str, Path] = {}
    failed = []

    def export() -> None:
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
            written["decoder"] = export_prompt_decoder(
                sam,
                out_dir / f"{spec.name}_decoder.onnx",
                return_single_mask=args.return_single_mask,
                use_stability_score=args.use_stability_score,
                return_extra_metrics=args.return_extra_metrics,
                **options,
            )
            print(f"wrote {written['decoder']}")
        if args.quantize_out:
            for kind in list(written):
                path = written[kind]
                written[f"{kind}_int8"] = quantize_onnx(
                    path, path.with_name(f"{path.stem}_int8.onnx"), args.quantize_weight_type
                )
                print(f"wrote {written[f'{kind}_int8']}")
        if args.check:
            for kind, path in written.items():
                if kind.startswith("encoder"):
                    result = check_image_encoder(sam, path)
                else:
                    result = check_prompt_decoder(sam, path)
                quantized = kind.endswith("_int8")
                if quantized:
                    print(
                        f"check: {kind} min cosine onnxruntime vs PyTorch (needs >= "
                        f"{INT8_MIN_COSINE}) = {result.min_cosine:.6f}"
                    )
                else:
                    print(
                        f"check: {kind} max abs diff onnxruntime vs PyTorch (tolerance "
                        f"{args.check_tolerance:g}) = {result.max_abs:.3g}"
                    )
                if not result.passes(quantized, args.check_tolerance):
                    failed.append(kind)

    # exit 2 for a bad model, ratio or file; 1 when onnx is missing or a file cannot be written
    run_cli(export)
    if failed:
        print(
            f"error: --check failed for {', '.join(failed)}: beyond the tolerance printed above",
            file=sys.stderr,
        )
        raise SystemExit(1)
    return written


if __name__ == "__main__":
    main()
