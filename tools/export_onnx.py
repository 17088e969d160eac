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
from typing import Any, Dict, List, Optional, Sequence

from biglittle_sam.export import FP32_TOLERANCE, INT8_MIN_COSINE, ExportSettings
from biglittle_sam.runtime.cli import add_settings_flags, run_cli, settings_kwargs

__all__ = ["FP32_TOLERANCE", "INT8_MIN_COSINE", "build_parser", "main"]

_MODEL_FLAGS = ("model", "checkpoint", "sam_checkpoint", "seed")
_CHECK_FLAGS = ("check", "check_tolerance")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="biglittle-sam-export-onnx", description=__doc__.split("\n")[0]
    )
    add_settings_flags(parser.add_argument_group("model"), ExportSettings, only=_MODEL_FLAGS)
    export = parser.add_argument_group("export")
    add_settings_flags(export, ExportSettings, exclude=_MODEL_FLAGS + _CHECK_FLAGS)
    export.add_argument(
        "--multimask",
        action="store_true",
        help="decoder returns all 4 masks: the default now, kept for old command lines",
    )
    add_settings_flags(parser, ExportSettings, only=_CHECK_FLAGS)
    return parser


def _export(settings: ExportSettings, written: Dict[str, Path]) -> Any:
    """Write the encoder, the decoder and their int8 copies into ``written`` (kind -> file, in
    order); returns the model, for the check."""
    from biglittle_sam.build_sam import build_model_from_spec, get_keep_ratio
    from biglittle_sam.export import export_image_encoder, export_prompt_decoder, quantize_onnx
    from biglittle_sam.model_spec import spec_with

    s = settings
    options: Dict[str, Any] = {"gelu_approximate": s.gelu_approximate, "opset": s.opset}
    out_dir = Path(s.out_dir)
    spec = spec_with(s.model, s.checkpoint, s.keep_ratio)
    sam = build_model_from_spec(spec, s.seed, sam_checkpoint=s.sam_checkpoint)
    ratio = spec.keep_ratio if spec.keep_ratio is not None else get_keep_ratio(sam)
    encoder_path = out_dir / f"{spec.name}_r{ratio:g}_encoder.onnx"
    written["encoder"] = export_image_encoder(
        sam, encoder_path, keep_ratio=spec.keep_ratio, **options
    )
    print(f"wrote {written['encoder']}")
    if not s.skip_decoder:
        written["decoder"] = export_prompt_decoder(
            sam,
            out_dir / f"{spec.name}_decoder.onnx",
            return_single_mask=s.return_single_mask,
            use_stability_score=s.use_stability_score,
            return_extra_metrics=s.return_extra_metrics,
            **options,
        )
        print(f"wrote {written['decoder']}")
    if s.quantize_out:
        for kind in list(written):
            path = written[kind]
            written[f"{kind}_int8"] = quantize_onnx(
                path, path.with_name(f"{path.stem}_int8.onnx"), s.quantize_weight_type
            )
            print(f"wrote {written[f'{kind}_int8']}")
    return sam


def _check(sam: Any, written: Dict[str, Path], tolerance: float) -> List[str]:
    """Run every file in onnxruntime against ``sam`` in PyTorch; the kinds that fail."""
    from biglittle_sam.export import check_image_encoder, check_prompt_decoder

    failed = []
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
                f"{tolerance:g}) = {result.max_abs:.3g}"
            )
        if not result.passes(quantized, tolerance):
            failed.append(kind)
    return failed


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Path]:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.return_single_mask and args.multimask:
        parser.error("--return-single-mask and --multimask contradict each other; give one")
    settings = ExportSettings(**settings_kwargs(args, ExportSettings))
    if not settings.check_tolerance > 0:
        parser.error(f"--check-tolerance must be a positive number, got {settings.check_tolerance}")
    written: Dict[str, Path] = {}

    def export_and_check() -> List[str]:
        sam = _export(settings, written)
        return _check(sam, written, settings.check_tolerance) if settings.check else []

    # exit 2 for a bad model, ratio or file; 1 when onnx is missing or a file cannot be written
    failed = run_cli(export_and_check)
    if failed:
        print(
            f"error: --check failed for {', '.join(failed)}: beyond the tolerance printed above",
            file=sys.stderr,
        )
        raise SystemExit(1)
    return written


if __name__ == "__main__":
    main()
