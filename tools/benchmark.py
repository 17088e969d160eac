"""Measure encoder speed: SAM ViT against big.LITTLE at several keep ratios, peers for context.

    biglittle-sam-benchmark --device cpu --out-dir outputs   # benchmark.json, .md and .png
    biglittle-sam-benchmark --onnx --compile ...   # also onnxruntime rows; torch.compile first
    biglittle-sam-benchmark --runtimes pytorch pytorch-int8 onnxruntime onnxruntime-int8 ...
    biglittle-sam-benchmark --segment-everything --device cpu --out-dir outputs/amg

Flags left out keep the library's defaults (``biglittle_sam.benchmarks.speed.BenchmarkConfig``).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from biglittle_sam.benchmarks.speed import (
    PEERS,
    RUNTIMES,
    BenchmarkConfig,
    run_benchmark,
    run_runtimes,
    save_json,
    save_plot,
    to_markdown,
)
from biglittle_sam.benchmarks.speed.segment_everything import (
    run_segment_everything,
    segment_everything_markdown,
)
from biglittle_sam.fileio import atomic_open
from biglittle_sam.mask_generator import MASK_GENERATORS
from biglittle_sam.model_spec import model_spec_arg
from biglittle_sam.runtime.cli import add_old_spelling, describe_defaults, run_cli
from biglittle_sam.runtime.distributed import resolve_device

# The library's defaults, for --help (the flags default to None: only the ones given are used).
_DEFAULTS = {
    **dataclasses.asdict(BenchmarkConfig()),
    "peers": " ".join(PEERS),
    "img_size": "the model's (1024)",
    "threads": "torch's choice",
    "max_batch_others": 4,
}
_OUTPUTS = {"json": "benchmark.json", "markdown": "benchmark.md", "plot": "benchmark.png"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="biglittle-sam-benchmark",
        description="Measured latency, throughput, memory and GMACs of SAM and big.LITTLE "
        "encoders.",
    )
    models = parser.add_argument_group("models")
    models.add_argument(
        "--sam",
        type=model_spec_arg,
        default=None,
        metavar="NAME",
        help="baseline SAM: a registry name (speed does not depend on the weights)",
    )
    models.add_argument(
        "--model",
        type=model_spec_arg,
        default=None,
        metavar="NAME[@RATIO]",
        help="big.LITTLE model: a registry name, optionally with one keep ratio (the model-spec "
        "form every tool takes; speed does not depend on the weights, so no checkpoint)",
    )
    models.add_argument(
        "--keep-ratios", type=float, nargs="+", default=None, help="big.LITTLE keep ratios"
    )
    models.add_argument(
        "--peers", nargs="+", default=None, help="timm peer backbones, or 'none' (needs timm)"
    )
    models.add_argument("--img-size", type=int, default=None, help="override the input size")
    models.add_argument(
        "--no-fast-sam",
        action="store_true",
        help="skip the row of SAM's weights on our fused attention path (default: timed)",
    )
    models.add_argument(
        "--pool-kv-ratios",
        nargs="+",
        default=None,
        help="keep ratios of the pooled keys/values rows, or 'none'",
    )
    models.add_argument(
        "--onnx",
        action="store_true",
        help="also export SAM and big.LITTLE at each ratio to ONNX and time them in onnxruntime "
        "(default: off)",
    )
    models.add_argument("--onnx-opset", type=int, default=None, help="ONNX opset of --onnx")
    models.add_argument(
        "--onnx-spinning",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="onnxruntime's threads spin between operators (its own default) or sleep (default: "
        "spin in the onnxruntime runtimes' own processes, sleep for --onnx rows beside PyTorch's)",
    )
    models.add_argument(
        "--runtimes",
        nargs="+",
        choices=RUNTIMES,
        default=None,
        metavar="RUNTIME",
        help=f"time every model in each runtime ({', '.join(RUNTIMES)}), one subprocess per "
        "runtime, with speedups against SAM in the same runtime (default: PyTorch eager only, "
        "in this process)",
    )
    everything = parser.add_argument_group("segment everything (instead of the encoder table)")
    everything.add_argument(
        "--segment-everything",
        action="store_true",
        help="time SamAutomaticMaskGenerator end to end on the CPU, split into encoder and "
        "decoder time, for --sam and --model at --keep-ratios; writes segment_everything.json "
        "and .md to --out-dir (default: off)",
    )
    everything.add_argument(
        "--points-per-side",
        type=int,
        default=32,
        help="the generator's point grid (default: 32, SAM's)",
    )
    everything.add_argument(
        "--generators",
        nargs="+",
        choices=list(MASK_GENERATORS),
        default=["upstream", "fast"],
        metavar="GENERATOR",
        help="the mask generators SAM is timed with: upstream (segment_anything's "
        "SamAutomaticMaskGenerator), fast (biglittle_sam's FastAutomaticMaskGenerator, the same "
        "masks) (default: upstream fast)",
    )
    everything.add_argument(
        "--model-generators",
        nargs="+",
        choices=list(MASK_GENERATORS),
        default=["fast"],
        metavar="GENERATOR",
        help="the mask generators --model is timed with (default: fast)",
    )
    run = parser.add_argument_group("run")
    run.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA when available), cpu, cuda or cuda:N (default: auto)",
    )
    run.add_argument(
        "--dtype",
        choices=["fp32", "bf16"],
        default=None,
        help="bf16: autocast, LayerNorm stays fp32",
    )
    run.add_argument(
        "--batch-sizes",
        type=int,
        nargs="+",
        default=None,
        help="latency at the first, images/s at every one",
    )
    run.add_argument(
        "--max-batch-others",
        type=int,
        default=None,
        help="largest batch for peers, pooled-k/v and ONNX rows; 0 for no limit",
    )
    run.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile every PyTorch model before timing (compile time reported apart; "
        "default: off)",
    )
    run.add_argument("--compile-backend", default=None, help="torch.compile backend")
    run.add_argument(
        "--warmup", type=int, default=None, help="untimed passes per model at the first batch"
    )
    run.add_argument("--repeats", type=int, default=None, help="timed rounds at the first batch")
    run.add_argument("--batch-repeats", type=int, default=None, help="rounds at other batches")
    run.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    run.add_argument(
        "--no-memory", action="store_true", help="skip the peak-memory pass (default: measured)"
    )
    run.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="a line per model measured, on stderr (default: on)",
    )
    out = parser.add_argument_group("output")
    out.add_argument(
        "--out-dir",
        default=None,
        help="write benchmark.json (full report), benchmark.md (table) and benchmark.png "
        "(latency against GMACs) here (default: none, the table is printed only)",
    )
    for name in _OUTPUTS:  # single files, before --out-dir: kept for old command lines
        add_old_spelling(out, f"--{name}", name)
    return describe_defaults(parser, _DEFAULTS)


def _ratios(values: List[str]) -> Tuple[float, ...]:
    if values == ["none"]:
        return ()
    try:
        return tuple(float(v) for v in values)
    except ValueError:
        raise ValueError(f"takes numbers or 'none', got {' '.join(values)}") from None


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    parser = build_parser()
    args = parser.parse_args(argv)
    given: Dict[str, Any] = {}
    try:
        given["device"] = str(resolve_device(args.device))
    except ValueError as e:
        parser.error(str(e))
    for flag, spec in (("--sam", args.sam), ("--model", args.model)):
        if spec is not None and spec.checkpoint is not None:
            parser.error(f"{flag} {spec.text}: timing needs no weights; give the name only")
    if args.sam is not None:
        given["sam"] = args.sam.name
    if args.model is not None:
        given["model"] = args.model.name
        if args.model.keep_ratio is not None:
            if args.keep_ratios is not None:
                parser.error(f"--model {args.model.text} sets its keep ratio; drop --keep-ratios")
            given["keep_ratios"] = (args.model.keep_ratio,)
    for name in ("dtype", "img_size", "threads", "warmup", "repeats"):
        if getattr(args, name) is not None:
            given[name] = getattr(args, name)
    if args.batch_repeats is not None:
        given["batch_repeats"] = args.batch_repeats
    if args.keep_ratios is not None:
        given["keep_ratios"] = tuple(args.keep_ratios)
    if args.batch_sizes is not None:
        given["batch_sizes"] = tuple(args.batch_sizes)
    if args.peers is not None:
        peers: List[str] = [] if args.peers == ["none"] else list(args.peers)
        given["peers"] = tuple(peers)
    if args.no_memory:
        given["memory"] = False
    if args.no_fast_sam:
        given["fast_sam"] = False
    if args.pool_kv_ratios is not None:
        try:
            given["pool_kv_ratios"] = _ratios(args.pool_kv_ratios)
        except ValueError as e:
            parser.error(f"--pool-kv-ratios {e}")
    if args.onnx:
        given["onnx"] = True
    if args.onnx_opset is not None:
        given["onnx_opset"] = args.onnx_opset
    if args.onnx_spinning is not None:
        given["onnx_spinning"] = args.onnx_spinning
    if args.max_batch_others is not None:
        given["max_batch_others"] = args.max_batch_others or None
    if args.runtimes is not None:
        given["runtimes"] = tuple(args.runtimes)
    if args.compile:
        given["compile"] = True
    if args.compile_backend is not None:
        given["compile_backend"] = args.compile_backend
    if args.segment_everything:
        return _segment_everything(parser, args, given)
    paths: Dict[str, Optional[str]] = {name: getattr(args, name, None) for name in _OUTPUTS}
    if args.out_dir is not None:
        paths = {name: str(Path(args.out_dir) / file) for name, file in _OUTPUTS.items()}
    log = (lambda m: print(m, file=sys.stderr, flush=True)) if args.progress else None
    run = run_runtimes if given.get("runtimes") else run_benchmark
    report = run_cli(lambda: run(BenchmarkConfig(**given), log))
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
    parser: argparse.ArgumentParser, args: argparse.Namespace, given: Dict[str, Any]
) -> Dict[str, Any]:
    """``--segment-everything``: the generator's time split into encoder and decoder (CPU)."""
    if args.device not in ("auto", "cpu"):
        parser.error("--segment-everything times the CPU; use --device cpu")
    kwargs: Dict[str, Any] = {"points_per_side": args.points_per_side}
    for name in ("sam", "model", "img_size", "keep_ratios"):
        if name in given:
            kwargs[name] = given[name]
    kwargs["repeats"] = given.get("repeats", 1)
    kwargs["generators"] = args.generators
    kwargs["model_generators"] = args.model_generators
    log = (lambda m: print(m, file=sys.stderr, flush=True)) if args.progress else None
    report = run_cli(lambda: run_segment_everything(progress=log, **kwargs))
    table = segment_everything_markdown(report)
    print(table)
    if args.out_dir is not None:
        save_json(report, str(Path(args.out_dir) / "segment_everything.json"))
        with atomic_open(Path(args.out_dir) / "segment_everything.md", "w") as f:
            f.write(table + "\n")
    return report


if __name__ == "__main__":
    main()
