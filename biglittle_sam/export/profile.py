"""Where an exported image encoder spends its time in onnxruntime: time per operator type.

``profile_onnx_encoder("bl_b_lite_r0.1_encoder.onnx")`` runs the file in an onnxruntime CPU
session with profiling on, and sums each node's kernel time by operator type (``MatMul``,
``TopK``, ``GatherElements``...) over the profiled runs. It answers the question a latency table
cannot: which operators make a routed encoder slower in onnxruntime than its MACs suggest, and
whether the time goes to arithmetic (``MatMul``, ``Gemm``) or to data movement (``Transpose``,
``Gather*``, ``Scatter*``, ``Reshape``).

``spinning`` sets onnxruntime's intra-op thread spinning. The package's sessions turn it off so
that a session does not take the CPU from what runs next in the process; with many small
operators, a sleeping thread pool pays a wake-up per parallel operator; profiling with and
without spinning shows what that costs.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np

from .check import _session, encoder_input_size
from .encoder import ENCODER_INPUT

__all__ = ["OnnxOpTime", "OnnxProfile", "profile_onnx_encoder", "format_onnx_profile"]

PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class OnnxOpTime:
    """One operator type's totals over the profiled runs (milliseconds per run)."""

    op_type: str
    ms_per_run: float
    nodes: int  # nodes of this type executed per run
    share: float  # of the summed kernel time


@dataclass
class OnnxProfile:
    """The result of :func:`profile_onnx_encoder`."""

    path: str
    batch_size: int
    runs: int
    threads: Optional[int]
    spinning: bool
    run_ms: float  # median wall time of one ``session.run`` (profiled runs)
    kernel_ms: float  # summed node kernel time per run
    ops: List[OnnxOpTime] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def node_times(events: List[Dict[str, Any]]) -> Dict[str, Dict[str, float]]:
    """Kernel time (microseconds) and node count per operator type, from onnxruntime's profile
    events (``cat == "Node"`` with ``args.op_name``; only the ``*_kernel_time`` events, so a node
    is not counted again for its fence events)."""
    totals: Dict[str, Dict[str, float]] = {}
    for event in events:
        if event.get("cat") != "Node" or not str(event.get("name", "")).endswith("_kernel_time"):
            continue
        op = str(event.get("args", {}).get("op_name", "?"))
        entry = totals.setdefault(op, {"us": 0.0, "count": 0.0})
        entry["us"] += float(event.get("dur", 0))
        entry["count"] += 1
    return totals


def profile_onnx_encoder(
    path: PathLike,
    batch_size: int = 1,
    warmup: int = 1,
    runs: int = 3,
    threads: Optional[int] = None,
    spinning: bool = False,
    seed: int = 0,
) -> OnnxProfile:
    """Profile an exported image encoder on random input.

    Arguments:
      path: a file written by ``export_image_encoder`` (input ``image``: B x 3 x S x S).
      batch_size, warmup, runs: images per run; unprofiled-for-the-median warm-up runs (their
        kernel events are dropped); profiled runs.
      threads: onnxruntime intra-op threads (None: its default, every core).
      spinning: let onnxruntime's worker threads spin between operators (its own default) instead
        of sleeping (the package's sessions).

    Returns:
      An :class:`OnnxProfile` with per-operator-type milliseconds per run, sorted by time.

    Raises:
      FileNotFoundError: ``path`` does not exist. ValueError: a bad count, or a file that is not
      an image encoder export.
    """
    file = Path(path)
    for name, value in (("batch_size", batch_size), ("runs", runs)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be a non-negative integer, got {warmup!r}")
    with tempfile.TemporaryDirectory() as tmp:
        session = _session(file, threads, spinning, profile_prefix=os.path.join(tmp, "ort"))
        size = encoder_input_size(session, file)
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((batch_size, 3, size, size), dtype=np.float32)
        walls: List[float] = []
        for _ in range(warmup + runs):
            start = time.perf_counter()
            session.run(None, {ENCODER_INPUT: x})
            walls.append(time.perf_counter() - start)
        trace = session.end_profiling()
        events = json.loads(Path(trace).read_text(encoding="utf-8"))
    # Drop the warm-up runs' node events: the profile's timestamps are microseconds since the
    # session started, and the model_run events mark where each run began.
    run_starts = sorted(float(e["ts"]) for e in events if e.get("name") == "model_run")
    if warmup and len(run_starts) > warmup:
        cut = run_starts[warmup]
        events = [e for e in events if float(e.get("ts", 0)) >= cut]
    totals = node_times(events)
    kernel_us = sum(v["us"] for v in totals.values())
    ops = [
        OnnxOpTime(
            op_type=op,
            ms_per_run=v["us"] / 1000.0 / runs,
            nodes=int(round(v["count"] / runs)),
            share=v["us"] / kernel_us if kernel_us else 0.0,
        )
        for op, v in totals.items()
    ]
    ops.sort(key=lambda o: -o.ms_per_run)
    return OnnxProfile(
        path=str(file),
        batch_size=batch_size,
        runs=runs,
        threads=threads,
        spinning=spinning,
        run_ms=statistics.median(walls[warmup:]) * 1000.0,
        kernel_ms=kernel_us / 1000.0 / runs,
        ops=ops,
    )


def format_onnx_profile(result: OnnxProfile, top: int = 15) -> str:
    """A markdown table of the ``top`` operator types by time, with the run's totals."""
    lines = [
        f"{Path(result.path).name}: batch {result.batch_size}, {result.runs} run(s), threads "
        f"{result.threads or 'default'}, spinning {'on' if result.spinning else 'off'}; "
        f"run {result.run_ms:.1f} ms (median), node kernels {result.kernel_ms:.1f} ms",
        "",
        "| operator | ms per run | nodes | share |",
        "|---|---:|---:|---:|",
    ]
    for op in result.ops[:top]:
        lines.append(f"| {op.op_type} | {op.ms_per_run:.2f} | {op.nodes} | {op.share:.1%} |")
    return "\n".join(lines) + "\n"
