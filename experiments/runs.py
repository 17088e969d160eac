"""What the proxy benchmarks' runs share: the device and processes a run resolves, its progress
lines, one training stage's settings, and the command line that checks the settings before any
stage runs."""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from biglittle_sam.fileio import atomic_write_json
from biglittle_sam.runtime.cli import run_cli, settings_kwargs
from biglittle_sam.runtime.hardware import hardware_description
from biglittle_sam.train.settings import TrainSettings, settings_to_dict

from .stages import stage_train

__all__ = [
    "RunDevice",
    "finish_run",
    "check_device",
    "progress_line",
    "result_header",
    "run_benchmark_cli",
    "run_stage_train",
]


def result_header(s: Any, kind: str, geometry: Dict[str, Any]) -> Dict[str, Any]:
    """The first entries of a run's result json: its format, when and how it ran (command,
    settings, hardware), the split, the geometry and the big.LITTLE student's fields."""
    return {
        "format": kind,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": s.command,
        "settings": settings_to_dict(s),
        "split": s.split,
        "geometry": geometry,
        "student": {"registry": "bl_tiny", **dict(s.student_overrides)},
        "hardware": hardware_description(s.resolved_device, s.nproc, s.threads),
    }


def check_device(device: str) -> None:
    """ValueError unless ``device`` is "auto", "cpu", "cuda" or "cuda:N"."""
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")


class RunDevice:
    """``resolved_device`` and ``nproc`` of a run's settings (fields ``device``, ``processes``)."""

    device: str
    processes: Optional[int]

    @property
    def resolved_device(self) -> str:
        """``device`` with "auto" resolved."""
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    @property
    def nproc(self) -> int:
        """Processes per training stage: ``processes``, else 1 on CUDA and 2 (at most the CPUs)
        on the CPU."""
        if self.processes is not None:
            return max(1, self.processes)
        if self.resolved_device.startswith("cuda"):
            return 1
        return max(1, min(2, os.cpu_count() or 1))


def progress_line(settings: Any, tag: str, message: str) -> None:
    """A time-stamped progress line, when ``settings.progress``."""
    if settings.progress:
        stamp = datetime.datetime.now().strftime("%H:%M:%S")
        print(f"[{tag} {stamp}] {message}", flush=True)


def run_stage_train(
    s: Any, out: Path, steps: int, lr: float, batch: int, keep_checkpoints: bool = False
) -> TrainSettings:
    """One stage's training settings from a run's settings: its budget, the run's seed, device,
    threads, data workers (``num_workers``, 0 when the run has none) and resume (with
    ``keep_checkpoints``, the teacher's step checkpoints stay, for its mIoU curve)."""
    return stage_train(
        out,
        steps,
        lr,
        batch,
        seed=s.seed,
        device=s.resolved_device,
        num_workers=getattr(s, "num_workers", 0),
        threads=s.threads,
        progress=s.progress,
        resume=s.resume,
        keep_checkpoints=keep_checkpoints,
    )


def run_benchmark_cli(
    parser: argparse.ArgumentParser,
    settings_type: Any,
    run: Callable[[Any], Dict[str, Any]],
    prog: str,
    argv: Optional[Sequence[str]] = None,
    prepare: Optional[Callable[[Dict[str, Any]], None]] = None,
) -> Dict[str, Any]:
    """Parse ``argv`` into ``settings_type``, check it (a bad setting exits 2 before any stage
    runs), run it, and print the markdown table it wrote (``result["outputs"]["markdown"]``).

    ``prepare`` may rewrite the parsed fields in place; a ValueError from it is a usage error.
    """
    args = parser.parse_args(argv)
    changes = settings_kwargs(args, settings_type)
    words = list(sys.argv[1:] if argv is None else argv)
    changes["command"] = " ".join([prog, *map(shlex.quote, words)])
    try:
        if prepare is not None:
            prepare(changes)
        settings = settings_type(**changes)
        settings.check()
    except ValueError as error:
        parser.error(str(error))  # exit 2, before any stage runs
    result = run_cli(lambda: run(settings))
    if result["outputs"].get("markdown"):
        with open(result["outputs"]["markdown"], encoding="utf-8") as f:
            print(f.read())
    return result


def finish_run(
    result: Dict[str, Any],
    out_json: Path,
    s: Any,
    models: Tuple[Path, Path],
    table: Callable[[Dict[str, Any]], str],
    tag: str,
) -> Dict[str, Any]:
    """The end of a run: with ``s.assets_dir``, the fp16 teacher and student (``models``) as the
    demo's built-in models, described with ``table(result)``; then the result json, written
    atomically, and a last progress line."""
    if s.assets_dir:
        from .assets import write_assets  # the demo's files: only for a run that writes them

        result["assets"] = write_assets(result, *models, Path(s.assets_dir), "proxy", table)
    atomic_write_json(out_json, result)
    progress_line(s, tag, f"done in {result['wall_s'] / 60:.1f} min on the {s.split} split")
    return result
