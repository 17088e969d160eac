"""Measure encoder speed: SAM ViT against big.LITTLE at several keep ratios, peers for context.

    biglittle-sam-benchmark --json outputs/benchmark.json --markdown outputs/benchmark.md \
        --plot outputs/benchmark.png
    biglittle-sam-benchmark --onnx --compile ...   # also onnxruntime rows; torch.compile first

Flags left out keep the library's defaults (``biglittle_sam.benchmarks.speed.BenchmarkConfig``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

from biglittle_sam.benchmarks.speed import (
    PEERS,
    BenchmarkConfig,
    run_benchmark,
    save_json,
    save_plot,
    to_markdown,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Measured latency, throughput, memory and GMACs of SAM and big.LITTLE "
        "encoders.",
    )
    models = parser.add_argument_group("models")
    models.add_argument("--sam", default=None, help="baseline SAM registry name (default vit_b)")
    models.add_argument("--model", default=None, help="big.LITTLE registry name (default bl_b)")
    models.add_argument(
        "--keep-ratios", type=float, nargs="+", default=None, help="default: 1.0 0.5 0.25 0.1"
    )
    models.add_argument(
        "--peers",
        nargs="+",
        default=None,
        help=f"timm peer backbones, or 'none' (default: {' '.join(PEERS)})",
    )
    models.add_argument("--img-size", type=int, default=None, help="override the input size")
    models.add_argument(
        "--no-fast-sam",
        action="store_true",
        help="skip the row of SAM's weights on our fused attention path",
    )
    models.add_argument(
        "--pool-kv-ratios",
        nargs="+",
        default=None,
        help="keep ratios of the pooled keys/values rows, or 'none' (default: 0.5 0.25 0.1)",
    )
    models.add_argument(
        "--onnx",
        action="store_true",
        help="also export SAM and big.LITTLE at each ratio to ONNX and time them in onnxruntime",
    )
    models.add_argument("--onnx-opset", type=int, default=None, help="default: 17")
    run = parser.add_argument_group("run")
    run.add_argument("--device", default=None, help="cpu (default) or cuda")
    run.add_argument("--dtype", choices=["fp32", "bf16"], default=None)
    run.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="default: 1 4 8")
    run.add_argument(
        "--max-batch-others",
        type=int,
        default=None,
        help="largest batch for peers, pooled-k/v and ONNX rows; 0 for no limit (default: 4)",
    )
    run.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile every PyTorch model before timing (compile time reported apart)",
    )
    run.add_argument("--compile-backend", default=None, help="default: inductor")
    run.add_argument("--warmup", type=int, default=None)
    run.add_argument("--repeats", type=int, default=None, help="timed rounds at the first batch")
    run.add_argument("--batch-repeats", type=int, default=None, help="rounds at other batches")
    run.add_argument("--threads", type=int, default=None)
    run.add_argument("--no-memory", action="store_true", help="skip the peak-memory pass")
    out = parser.add_argument_group("output")
    out.add_argument("--json", default=None, help="write the full report as JSON")
    out.add_argument("--markdown", default=None, help="write the markdown table")
    out.add_argument("--plot", default=None, help="write a PNG of latency against GMACs")
    return parser


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
    for name in ("sam", "model", "device", "dtype", "img_size", "threads", "warmup", "repeats"):
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
    if args.max_batch_others is not None:
        given["max_batch_others"] = args.max_batch_others or None
    if args.compile:
        given["compile"] = True
    if args.compile_backend is not None:
        given["compile_backend"] = args.compile_backend
    report = run_benchmark(
        BenchmarkConfig(**given), progress=lambda m: print(m, file=sys.stderr, flush=True)
    )
    table = to_markdown(report)
    print(table)
    if args.json:
        save_json(report, args.json)
    if args.markdown:
        from pathlib import Path

        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(table + "\n")
    if args.plot:
        save_plot(report, args.plot)
    return report


if __name__ == "__main__":
    main()
