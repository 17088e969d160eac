"""The hardware a measurement ran on, as one line for reports (the speed and proxy benchmarks).

Timings and training budgets mean little without the machine behind them, so every benchmark
report carries this line next to its figures.
"""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path
from typing import Optional

import torch

__all__ = ["cpu_name", "hardware_description"]


def cpu_name() -> str:
    """The CPU's model name from ``/proc/cpuinfo``, else what :mod:`platform` knows of it."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return cpu


def hardware_description(
    device: str = "cpu", processes: Optional[int] = None, threads: Optional[int] = None
) -> str:
    """The machine, in one line.

    Arguments:
      device: the device measured on; a CUDA device is described by its name alone.
      processes: for a job of several processes (the proxy benchmark's gloo stages), how many; then
        ``threads`` is each process's torch thread count and the torch version is added.
        None: one process, described with torch's current thread count.
      threads: torch threads per process of a multi-process job (default: torch's current count).

    Returns:
      ``"<GPU name>"``, ``"<CPU>, 8 cores, 8 torch threads"`` (one process) or
      ``"<CPU>, 2 logical CPUs; 2 process(es) x 1 thread(s); torch 2.4.0"`` (a job).
    """
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    if processes is None:
        return f"{cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    per_process = torch.get_num_threads() if threads is None else threads
    return (
        f"{cpu_name()}, {os.cpu_count()} logical CPUs; {processes} process(es) x "
        f"{per_process} thread(s); torch {torch.__version__}"
    )
