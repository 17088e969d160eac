"""Interleaved timing for the experiments' same-process speed comparisons.

Every row is run once untimed (warm-up), then ``rounds`` rounds each run every row once, so that a
slower stretch of a shared machine hits every row alike; callers report the median per row.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Mapping, Tuple

import torch

__all__ = ["time_interleaved"]

# A row: (prepare, run): ``prepare`` (untimed) sets what the pass needs, e.g. the keep ratio.
TimedRow = Tuple[Callable[[], None], Callable[[], Any]]


def time_interleaved(rows: Mapping[str, TimedRow], rounds: int) -> Dict[str, List[float]]:
    """Seconds of every timed pass of each row, in ``torch.inference_mode``."""

    def once(row: TimedRow) -> float:
        prepare, run = row
        prepare()
        start = time.perf_counter()
        with torch.inference_mode():
            run()
        return time.perf_counter() - start

    for row in rows.values():
        once(row)
    times: Dict[str, List[float]] = {name: [] for name in rows}
    for _ in range(rounds):
        for name, row in rows.items():
            times[name].append(once(row))
    return times
