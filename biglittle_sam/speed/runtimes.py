"""One report across runtimes: each runtime timed in a subprocess of its own, then merged.

A resident onnxruntime session, or a quantised copy of a model, holds memory and threads that
would slow the rows measured after it in the same process; so :func:`run_runtimes` runs
``python -m biglittle_sam.speed.runtimes`` once per runtime of
``BenchmarkConfig.runtimes`` (SAM's rows and ours in each), reads each report back and merges
them. Every row's ``speedup`` is against SAM **in the same runtime**; ``speedup_vs_sam_pytorch``
is against SAM in PyTorch eager fp32 when that runtime was timed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from ..fileio import atomic_write_json
from .rows import BenchmarkConfig

__all__ = ["run_runtimes", "merge_reports", "config_from_json"]


def config_from_json(data: Dict[str, Any]) -> BenchmarkConfig:
    """A :class:`BenchmarkConfig` from ``asdict(config)`` as JSON holds it (lists as tuples)."""
    return BenchmarkConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def merge_reports(reports: Sequence[Dict[str, Any]], cfg: BenchmarkConfig) -> Dict[str, Any]:
    """The rows of one report per runtime, in runtime order, under the first report's ``meta``.

    Each row keeps its same-runtime ``speedup``; ``speedup_vs_sam_pytorch`` is added against the
    upstream SAM row of the "pytorch" runtime, when there is one.
    """
    if not reports:
        raise ValueError("no runtime reports to merge")
    results: List[Dict[str, Any]] = [r for report in reports for r in report["results"]]
    base = next((r for r in results if r["family"] == "sam" and r["runtime"] == "pytorch"), None)
    for r in results:
        if base is not None and base["latency_s"] and r["latency_s"]:
            r["speedup_vs_sam_pytorch"] = base["latency_s"] / r["latency_s"]
    meta = dict(reports[0]["meta"])
    meta["config"] = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}
    meta["runtimes"] = [report["meta"]["config"]["runtime"] for report in reports]
    return {"meta": meta, "results": results}


def run_runtimes(
    cfg: BenchmarkConfig, say: Optional[Callable[[str], None]] = None
) -> Dict[str, Any]:
    """Time ``cfg`` in each of ``cfg.runtimes``, one subprocess each, and merge the reports.

    A runtime whose subprocess fails does not cost the others their rows: the remaining runtimes
    run, and the merged report lists the failures in ``meta["failed_runtimes"]`` (runtime -> its
    exit status and the last lines of its stderr; every line also goes to ``say``).

    Raises:
      RuntimeError: every runtime's subprocess failed.
    """
    say = say or (lambda msg: None)
    reports = []
    failures: Dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="bl_runtimes_") as tmp:
        for runtime in cfg.runtimes:
            one = dataclasses.replace(cfg, runtime=runtime, runtimes=())
            config_path, out_path = (
                Path(tmp) / f"{runtime}.config.json",
                Path(tmp) / f"{runtime}.json",
            )
            atomic_write_json(config_path, asdict(one))
            say(f"runtime {runtime}: timing in a subprocess")
            cmd = [
                sys.executable,
                "-m",
                __name__,
                "--config",
                str(config_path),
                "--output",
                str(out_path),
            ]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            for line in done.stderr.splitlines():
                say(f"[{runtime}] {line}")
            if done.returncode != 0:
                tail = "\n".join(done.stderr.strip().splitlines()[-5:])
                failures[runtime] = f"exit {done.returncode}:\n{tail}"
                say(f"runtime {runtime} failed (exit {done.returncode}); going on with the others")
                continue
            reports.append(json.loads(out_path.read_text()))
    if not reports:
        detail = "\n".join(f"{runtime}: {why}" for runtime, why in failures.items())
        raise RuntimeError(f"every runtime's benchmark process failed:\n{detail}")
    merged = merge_reports(reports, cfg)
    merged["meta"]["failed_runtimes"] = failures
    return merged


def main(argv: Optional[Sequence[str]] = None) -> None:
    """The subprocess: one runtime's benchmark from a config file to a report file."""
    from .measure import run_benchmark
    from .report import save_json

    parser = argparse.ArgumentParser(description="One runtime of the speed benchmark.")
    parser.add_argument("--config", required=True, help="BenchmarkConfig as JSON")
    parser.add_argument("--output", required=True, help="where to write the report (JSON)")
    args = parser.parse_args(argv)
    cfg = config_from_json(json.loads(Path(args.config).read_text()))
    report = run_benchmark(cfg, progress=lambda m: print(m, file=sys.stderr, flush=True))
    save_json(report, args.output)


if __name__ == "__main__":
    main()
