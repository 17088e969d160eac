"""Measure encoder speed: SAM ViT against big.LITTLE at several keep ratios, peers for context.

    biglittle-sam-benchmark --device cpu --out-dir outputs   # benchmark.json, .md and .png
    biglittle-sam-benchmark --onnx --compile ...   # also onnxruntime rows; torch.compile first
    biglittle-sam-benchmark --runtimes pytorch pytorch-int8 onnxruntime onnxruntime-int8 ...
    biglittle-sam-benchmark --segment-everything --device cpu --out-dir outputs/amg

Flags left out keep the library's defaults (``biglittle_sam.speed.BenchmarkConfig``).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from biglittle_sam.fileio import atomic_open
from biglittle_sam.mask_generator import MASK_GENERATORS
from biglittle_sam.runtime.cli import (
    add_old_spelling,
    add_settings_flags,
    flag,
    run_cli,
    settings_kwargs,
)
from biglittle_sam.runtime.distributed import resolve_device
from biglittle_sam.speed import (
    BenchmarkConfig,
    run_benchmark,
    run_runtimes,
    save_json,
    save_plot,
    to_markdown,
)
from biglittle_sam.speed.segment_everything import (
    run_segment_everything,
    segment_everything_markdown,
)

_OUTPUTS = {"json": "benchmark.json", "markdown": "benchmark.md", "plot": "benchmark.png"}
_DEVICE = "auto"  # the command line's device (BenchmarkConfig's own is the CPU)
# BenchmarkConfig's flags under "models"; the others go under "run".
_MODEL_FLAGS = (
    "sam",
    "model",
    "keep_ratios",
    "training_free",
    "peers",
    "img_size",
    "fast_sam",
    "pool_kv_ratios",
    "onnx",
    "onnx_opset",
    "onnx_spinning",
    "runtimes",
)
# Flags that main turns into BenchmarkConfig's values itself (specs, 'none', 0, auto).
_BY_HAND = ("sam", "model", "device", "peers", "pool_kv_ratios", "max_batch_others")


@dataclass(frozen=True)
class ToolSettings:
    """The tool's own flags: segment everything instead of the encoder table, progress, output."""

    segment_everything: bool = flag(
        False,
        "time SamAutomaticMaskGenerator end to end on the CPU, split into encoder and decoder "
        "time, for --sam and --model at --keep-ratios; writes segment_everything.json and .md to "
        "--out-dir",
    )
    points_per_side: int = 32  # the generator's point grid (SAM's)
    generators: Tuple[str, ...] = flag(
        ("upstream", "fast"),
        "the mask generators SAM is timed with: upstream (segment_anything's "
        "SamAutomaticMaskGenerator), fast (biglittle_sam's FastAutomaticMaskGenerator, the same "
        "masks)",
        choices=tuple(MASK_GENERATORS),
        metavar="GENERATOR",
    )
    model_generators: Tuple[str, ...] = flag(
        ("fast",),
        "the mask generators --model is timed with",
        choices=tuple(MASK_GENERATORS),
        metavar="GENERATOR",
    )
    progress: bool = True  # a line per model measured, on stderr
    out_dir: Optional[str] = flag(
        None,
        "write benchmark.json (full report), benchmark.md (table) and benchmark.png (latency "
        "against GMACs) here (default: none, the table is printed only)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="biglittle-sam-benchmark",
        description="Measured latency, throughput, memory and GMACs of SAM and big.LITTLE "
        "encoders.",
    )
    models = parser.add_argument_group("models")
    add_settings_flags(models, BenchmarkConfig, only=_MODEL_FLAGS)
    everything = parser.add_argument_group("segment everything (instead of the encoder table)")
    add_settings_flags(everything, ToolSettings, exclude=("progress", "out_dir"))
    run = parser.add_argument_group("run")
    add_settings_flags(run, BenchmarkConfig, exclude=_MODEL_FLAGS, defaults={"device": _DEVICE})
    add_settings_flags(run, ToolSettings, only=("progress",))
    out = parser.add_argument_group("output")
    add_settings_flags(out, ToolSettings, only=("out_dir",))
    for name in _OUTPUTS:  # single files, before --out-dir: kept for old command lines
        add_old_spelling(out, f"--{name}", name)
    return parser


def _ratios(values: List[str]) -> Tuple[float, ...]:
    if values == ["none"]:
        return ()
    try:
        return tuple(float(v) for v in values)
    except ValueError:
        raise ValueError(f"takes numbers or 'none', got {' '.join(values)}") from None


def _config_kwargs(args: argparse.Namespace) -> Dict[str, Any]:
    """:class:`BenchmarkConfig`'s keyword arguments from the flags given.

    Raises:
      ValueError: a usage error (an unknown device, a checkpoint in a model spec, a keep ratio
        given twice, keep ratios that are not numbers).
    """
    given = settings_kwargs(args, BenchmarkConfig, exclude=_BY_HAND)
    given["device"] = str(resolve_device(args.device or _DEVICE))
    for name, spec in (("--sam", args.sam), ("--model", args.model)):
        if spec is not None and spec.checkpoint is not None:
            raise ValueError(f"{name} {spec.text}: timing needs no weights; give the name only")
    if args.sam is not None:
        given["sam"] = args.sam.name
    if args.model is not None:
        given["model"] = args.model.name
        if args.model.keep_ratio is not None:
            if args.keep_ratios is not None:
                raise ValueError(
                    f"--model {args.model.text} sets its keep ratio; drop --keep-ratios"
                )
            given["keep_ratios"] = (args.model.keep_ratio,)
    if args.peers is not None:
        given["peers"] = () if args.peers == ["none"] else tuple(args.peers)
    if args.pool_kv_ratios is not None:
        try:
            given["pool_kv_ratios"] = _ratios(args.pool_kv_ratios)
        except ValueError as e:
            raise ValueError(f"--pool-kv-ratios {e}") from None
    if args.max_batch_others is not None:
        given["max_batch_others"] = args.max_batch_others or None
    return given


def _log(tool: ToolSettings) -> Optional[Callable[[str], None]]:
    """Progress lines on stderr, or None with --no-progress."""
    return (lambda m: print(m, file=sys.stderr, flush=True)) if tool.progress else None


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    parser = build_parser()
    args = parser.parse_args(argv)
    tool = ToolSettings(**settings_kwargs(args, ToolSettings))
    try:
        given = _config_kwargs(args)
    except ValueError as e:
        parser.error(str(e))
    if tool.segment_everything:
        return _segment_everything(parser, args.device or _DEVICE, tool, given)
    paths: Dict[str, Optional[str]] = {name: getattr(args, name, None) for name in _OUTPUTS}
    if tool.out_dir is not None:
        paths = {name: str(Path(tool.out_dir) / file) for name, file in _OUTPUTS.items()}
    run = run_runtimes if given.get("runtimes") else run_benchmark
    report = run_cli(lambda: run(BenchmarkConfig(**given), _log(tool)))
    table = to_markdown(report)
    print(table)
    if paths["json"]:
        save_json(report, paths["json"])
    if paths["markdown"]:
        with atomic_open(paths["markdown"], "w") as f:
            f.write(table + "\n")
    if paths["plot"]:
        save_plot(report, paths["plot"])
    failed = report["meta"].get("failed_runtimes") or {}
    for runtime, why in failed.items():
        print(f"error: the {runtime} runtime's benchmark process failed ({why})", file=sys.stderr)
    if failed:  # the other runtimes' rows are written above
        raise SystemExit(1)
    return report


def _segment_everything(
    parser: argparse.ArgumentParser, device: str, tool: ToolSettings, given: Dict[str, Any]
) -> Dict[str, Any]:
    """``--segment-everything``: the generator's time split into encoder and decoder (CPU)."""
    if device not in ("auto", "cpu"):
        parser.error("--segment-everything times the CPU; use --device cpu")
    kwargs: Dict[str, Any] = {"points_per_side": tool.points_per_side}
    for name in ("sam", "model", "img_size", "keep_ratios"):
        if name in given:
            kwargs[name] = given[name]
    kwargs["repeats"] = given.get("repeats", 1)
    kwargs["generators"] = tool.generators
    kwargs["model_generators"] = tool.model_generators
    log = _log(tool)
    report = run_cli(lambda: run_segment_everything(progress=log, **kwargs))
    table = segment_everything_markdown(report)
    print(table)
    if tool.out_dir is not None:
        save_json(report, str(Path(tool.out_dir) / "segment_everything.json"))
        with atomic_open(Path(tool.out_dir) / "segment_everything.md", "w") as f:
            f.write(table + "\n")
    return report


if __name__ == "__main__":
    main()
