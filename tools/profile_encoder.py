"""Profile one image encoder with torch.profiler: the top operators by self CPU time.

    biglittle-sam-profile --model bl_b --keep-ratio 0.25 --top 15
    biglittle-sam-profile --model bl_b --keep-ratio 0.1 --pool-kv --output outputs/profile.json
    biglittle-sam-profile --macs   # no profiling: the analytic MAC split (flops.mac_split)
    biglittle-sam-profile --onnx bl_b_lite_r0.1_encoder.onnx --steps 3   # onnxruntime, per op type

Flags left out keep the library's defaults (``biglittle_sam.profile.profile_encoder``).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

from biglittle_sam.fileio import atomic_write_json
from biglittle_sam.flops import format_split_table, mac_split
from biglittle_sam.profile import ProfileSettings, format_table, profile_encoder
from biglittle_sam.runtime.cli import add_settings_flags, flag, settings_kwargs

__all__ = ["ProfileRun", "build_parser", "main"]

_MODEL_FLAGS = ("model", "keep_ratio", "pool_kv", "img_size")


@dataclass(frozen=True)
class ProfileRun:
    """The tool's own flags: an exported file instead of a model, the MAC split, the output."""

    onnx: Optional[str] = flag(
        None,
        "profile this exported image encoder in onnxruntime: kernel time per operator type "
        "(default: none, torch.profiler of --model)",
        metavar="FILE",
    )
    spinning: bool = flag(
        False,
        "with --onnx: let onnxruntime's threads spin between operators, its own default "
        "(default: off, as the package's sessions run)",
    )
    macs: bool = flag(
        False,
        "print where the MACs go (E-blocks, k/v of unrouted tokens, patch embed + neck, routed "
        "big blocks, attention, router) instead of profiling",
    )
    macs_models: Tuple[str, ...] = ("vit_b", "bl_b", "bl_b_lite")  # registry names of --macs
    macs_ratios: Tuple[float, ...] = flag(
        (1.0, 0.5, 0.25, 0.1), "keep ratios of --macs, pooled keys/values below 1"
    )
    top: int = 15  # operators to print
    output: Optional[str] = flag(
        None,
        "write every operator's totals to this JSON file (default: none, print only)",
        old=("--json",),
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="biglittle-sam-profile",
        description="torch.profiler of one image encoder (random weights): top operators by self "
        "CPU time, and any host syncs in the forward pass.",
    )
    add_settings_flags(parser.add_argument_group("model"), ProfileSettings, only=_MODEL_FLAGS)
    onnx = parser.add_argument_group("onnxruntime (an exported encoder instead of --model)")
    add_settings_flags(onnx, ProfileRun, only=("onnx", "spinning"))
    add_settings_flags(parser.add_argument_group("run"), ProfileSettings, exclude=_MODEL_FLAGS)
    macs = parser.add_argument_group("analytic MAC split (no profiling)")
    add_settings_flags(macs, ProfileRun, only=("macs", "macs_models", "macs_ratios"))
    add_settings_flags(parser.add_argument_group("output"), ProfileRun, only=("top", "output"))
    return parser


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    parser = build_parser()
    args = parser.parse_args(argv)
    run = ProfileRun(**settings_kwargs(args, ProfileRun))
    if run.macs:
        return _mac_split(parser, run)
    if run.onnx:
        return _profile_onnx(parser, args, run)
    try:
        result = profile_encoder(**settings_kwargs(args, ProfileSettings))
    except (KeyError, ValueError) as e:  # an unknown model, a bad ratio or option
        parser.error(str(e).strip("'\""))
    print(format_table(result, top=run.top))
    return _report(result.to_dict(), run.output)


def _mac_split(parser: argparse.ArgumentParser, run: ProfileRun) -> Dict[str, Any]:
    """Print and return the analytic MAC split of ``--macs-models`` at ``--macs-ratios``."""
    try:
        print(format_split_table(run.macs_models, run.macs_ratios))
    except (KeyError, ValueError) as e:  # an unknown model or a bad ratio
        parser.error(str(e).strip("'\""))
    return {
        "macs": {
            name: {f"{r:g}": mac_split(name, r, r < 1.0) for r in run.macs_ratios}
            for name in run.macs_models
        }
    }


def _profile_onnx(
    parser: argparse.ArgumentParser, args: argparse.Namespace, run: ProfileRun
) -> Dict[str, Any]:
    """Profile the ``--onnx`` file in onnxruntime (``--steps`` are its profiled runs)."""
    from biglittle_sam.export.profile import format_onnx_profile, profile_onnx_encoder

    if args.model or args.keep_ratio is not None or args.pool_kv or args.img_size:
        parser.error("--onnx profiles an exported file: its model, keep ratio and size are fixed")
    given: Dict[str, Any] = {"spinning": run.spinning}
    for name, key in (("batch_size", "batch_size"), ("warmup", "warmup"), ("steps", "runs")):
        if getattr(args, name) is not None:
            given[key] = getattr(args, name)
    if args.threads is not None:
        given["threads"] = args.threads
    try:
        result = profile_onnx_encoder(run.onnx, **given)
    except (FileNotFoundError, ValueError) as e:
        parser.error(str(e))
    print(format_onnx_profile(result, top=run.top))
    return _report(result.to_dict(), run.output)


def _report(report: Dict[str, Any], output: Optional[str]) -> Dict[str, Any]:
    """Write ``report`` to ``output`` as JSON when one is given; return it."""
    if output:
        atomic_write_json(output, report, indent=2)
    return report


if __name__ == "__main__":
    main()
