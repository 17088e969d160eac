"""Export a model's image encoder (at a fixed keep ratio) and its prompt decoder to ONNX.

    biglittle-sam-export-onnx --model bl_b --checkpoint bl_b.pth --keep-ratio 0.25 --out-dir onnx/

writes ``onnx/bl_b_r0.25_encoder.onnx`` and ``onnx/bl_b_decoder.onnx``; ``--check`` then runs both
in onnxruntime and prints the largest difference from PyTorch. Needs the ``export`` extra:
``pip install "biglittle-sam[export]"``. docs/export.md shows how to run the pair.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from biglittle_sam.train.cli import run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="biglittle-sam-export-onnx", description=__doc__.split("\n")[0]
    )
    models = parser.add_argument_group("model")
    models.add_argument(
        "--model",
        required=True,
        help="registry name: bl_b, bl_l, bl_h, vit_b, vit_tiny, bl_tiny... (required)",
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
        "--multimask",
        action="store_true",
        help="decoder returns all 4 masks, not only the best (return_single_mask=False; "
        "default: off)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="run the exported files in onnxruntime and print the max abs diff from PyTorch "
        "(default: off)",
    )
    return parser


def _build_model(args: argparse.Namespace) -> Any:
    import torch

    from biglittle_sam.build_sam import sam_model_registry

    if args.model not in sam_model_registry:
        known = ", ".join(sorted(sam_model_registry))
        raise ValueError(f"unknown model {args.model!r}; known models: {known}")
    kwargs: Dict[str, Any] = {}
    for key in ("checkpoint", "sam_checkpoint"):
        path = getattr(args, key)
        if path is not None:
            if not Path(path).is_file():
                raise FileNotFoundError(f"--{key.replace('_', '-')} {path} not found")
            kwargs[key] = path
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed if args.seed is not None else 0)
        return sam_model_registry[args.model](**kwargs)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Path]:
    args = build_parser().parse_args(argv)
    from biglittle_sam.build_sam import get_keep_ratio
    from biglittle_sam.export import (
        compare_image_encoder,
        compare_prompt_decoder,
        export_image_encoder,
        export_prompt_decoder,
    )

    options: Dict[str, Any] = {}
    if args.opset is not None:
        options["opset"] = args.opset
    out_dir = Path(args.out_dir) if args.out_dir is not None else Path(".")
    written: Dict[str, Path] = {}

    def export() -> None:
        sam = _build_model(args)
        ratio = args.keep_ratio if args.keep_ratio is not None else get_keep_ratio(sam)
        encoder_path = out_dir / f"{args.model}_r{ratio:g}_encoder.onnx"
        written["encoder"] = export_image_encoder(
            sam, encoder_path, keep_ratio=args.keep_ratio, **options
        )
        print(f"wrote {written['encoder']}")
        if not args.skip_decoder:
            decoder_options = dict(options)
            if args.multimask:
                decoder_options["return_single_mask"] = False
            written["decoder"] = export_prompt_decoder(
                sam, out_dir / f"{args.model}_decoder.onnx", **decoder_options
            )
            print(f"wrote {written['decoder']}")
        if args.check:
            diff = compare_image_encoder(sam, written["encoder"])
            print(f"check: encoder max abs diff onnxruntime vs PyTorch = {diff:.3g}")
            if "decoder" in written:
                diff = compare_prompt_decoder(sam, written["decoder"])
                print(f"check: decoder max abs diff onnxruntime vs PyTorch = {diff:.3g}")

    # exit 2 for a bad model, ratio or file; 1 when onnx is missing or a file cannot be written
    run_cli(export)
    return written


if __name__ == "__main__":
    main()
