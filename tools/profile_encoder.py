"""Profile one image encoder with torch.profiler: the top operators by self CPU time.

    biglittle-sam-profile --model bl_b --keep-ratio 0.25 --top 15
    biglittle-sam-profile --model bl_b --keep-ratio 0.1 --pool-kv --output outputs/profile.json
    biglittle-sam-profile --macs   # no profiling: the analytic MAC split (flops.mac_split)
    biglittle-sam-profile --onnx bl_b_lite_r0.1_encoder.onnx --steps 3   # onnxruntime, per op type

Flags left out keep the library's defaults (``biglittle_sam.profile.profile_encoder``).
"""

from __future__ import annotations

import argparse
from typing import Any, Dict, Optional, Sequence

from biglittle_sam.fileio import atomic_write_json
from biglittle_sam.flops import format_split_table, mac_split
from biglittle_sam.profile import format_table, profile_encoder
from biglittle_sam.runtime.cli import add_old_spelling


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="biglittle-sam-profile",
        description="torch.profiler of one image encoder (random weights): top operators by self "
        "CPU time, and any host syncs in the forward pass.",
    )
    model = parser.add_argument_group("model")
    model.add_argument("--model", default=None, help="registry name (default bl_b)")
    model.add_argument(
        "--keep-ratio",
        type=float,
        default=None,
        help="big.LITTLE keep ratio (default: the config's)",
    )
    model.add_argument(
        "--pool-kv", action="store_true", help="pooled keys/values (big.LITTLE; default: off)"
    )
    model.add_argument(
        "--img-size", type=int, default=None, help="override the input size (default: 1024)"
    )
    onnx = parser.add_argument_group("onnxruntime (an exported encoder instead of --model)")
    onnx.add_argument(
        "--onnx",
        default=None,
        metavar="FILE",
        help="profile this exported image encoder in onnxruntime: kernel time per operator type "
        "(default: none, torch.profiler of --model)",
    )
    onnx.add_argument(
        "--spinning",
        action="store_true",
        help="with --onnx: let onnxruntime's threads spin between operators, its own default "
        "(default: off, as the package's sessions run)",
    )
    run = parser.add_argument_group("run")
    run.add_argument("--batch-size", type=int, default=None, help="default 1")
    run.add_argument("--warmup", type=int, default=None, help="unprofiled passes (default 1)")
    run.add_argument("--steps", type=int, default=None, help="profiled passes (default 1)")
    run.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    macs = parser.add_argument_group("analytic MAC split (no profiling)")
    macs.add_argument(
        "--macs",
        action="store_true",
        help="print where the MACs go (E-blocks, k/v of unrouted tokens, patch embed + neck, "
        "routed big blocks, attention, router) instead of profiling (default: off)",
    )
    macs.add_argument(
        "--macs-models",
        nargs="+",
        default=["vit_b", "bl_b", "bl_b_lite"],
        help="registry names of --macs (default: vit_b bl_b bl_b_lite)",
    )
    macs.add_argument(
        "--macs-ratios",
        nargs="+",
        type=float,
        default=[1.0, 0.5, 0.25, 0.1],
        help="keep ratios of --macs, pooled keys/values below 1 (default: 1 0.5 0.25 0.1)",
    )
    out = parser.add_argument_group("output")
    out.add_argument("--top", type=int, default=15, help="operators to print (default 15)")
    add_old_spelling(out, "--json", "output")
    out.add_argument(
        "--output",
        default=None,
        help="write every operator's totals to this JSON file (default: none, print only)",
    )
    return parser


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.macs:
        try:
            print(format_split_table(args.macs_models, args.macs_ratios))
        except (KeyError, ValueError) as e:  # an unknown model or a bad ratio
            parser.error(str(e).strip("'\""))
        return {
            "macs": {
                name: {f"{r:g}": mac_split(name, r, r < 1.0) for r in args.macs_ratios}
                for name in args.macs_models
            }
        }
    if args.onnx:
        return _profile_onnx(parser, args)
    given: Dict[str, Any] = {}
    for name in ("model", "keep_ratio", "img_size", "batch_size", "warmup", "steps", "threads"):
        if getattr(args, name) is not None:
            given[name] = getattr(args, name)
    if args.pool_kv:
        given["pool_kv"] = True
    try:
        result = profile_encoder(**given)
    except (KeyError, ValueError) as e:  # an unknown model, a bad ratio or option
        parser.error(str(e).strip("'\""))
    print(format_table(result, top=args.top))
    report = result.to_dict()
    if args.output:
        atomic_write_json(args.output, report, indent=2)
    return report


def _profile_onnx(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Dict[str, Any]:
    from biglittle_sam.export.profile import format_onnx_profile, profile_onnx_encoder

    if args.model or args.keep_ratio is not None or args.pool_kv or args.img_size:
        parser.error("--onnx profiles an exported file: its model, keep ratio and size are fixed")
    given: Dict[str, Any] = {"spinning": args.spinning}
    for name, key in (("batch_size", "batch_size"), ("warmup", "warmup"), ("steps", "runs")):
        if getattr(args, name) is not None:
            given[key] = getattr(args, name)
    if args.threads is not None:
        given["threads"] = args.threads
    try:
        result = profile_onnx_encoder(args.onnx, **given)
    except (FileNotFoundError, ValueError) as e:
        parser.error(str(e))
    print(format_onnx_profile(result, top=args.top))
    report = result.to_dict()
    if args.output:
        atomic_write_json(args.output, report, indent=2)
    return report


if __name__ == "__main__":
    main()
