"""The proxy benchmark: the whole distillation pipeline at a geometry close to SAM's.

- :mod:`.routing`: training-free routers (patch gradient energy, token norm) and the encoder's
  static top-k selection, to compare a learned router with a heuristic.
- :mod:`.capacity`: the share of big-block capacity spent on object tokens against the objects'
  share of the image; :mod:`.heatmap` measures it for a distilled student.
- :mod:`.settings`: the geometry (16 x 16 or 32 x 32 tokens in 7-token windows) and budgets.
- :mod:`.data`: mostly-background shapes splits with size bins relative to the image.
- :mod:`.pipeline` / :mod:`.report`: the stages and the table (test split only).
- :mod:`.cli`: the command line, ``python -m experiments.proxy`` (``make proxy-benchmark``).
- :mod:`.layers` and :mod:`.curve`: diagnostics of a finished run (which layers' routing costs the
  mIoU; the teacher's mIoU against its training minutes); :mod:`.recipes` writes the stages as the
  recipe files in ``configs/``; :mod:`.budget` measures the cost of a training step.
"""

from .capacity import CapacityShare, capacity_share, object_coverage
from .data import RELATIVE_BINS, make_proxy_split, object_share, relative_bin
from .heatmap import measure_capacity_share
from .pipeline import run_proxy_benchmark
from .report import bin_retention, check_proxy_targets, proxy_table
from .routing import gradient_energy, select_top, token_norm
from .settings import GEOMETRIES, ProxyBenchmarkSettings, split_seeds

__all__ = [
    "GEOMETRIES",
    "ProxyBenchmarkSettings",
    "RELATIVE_BINS",
    "bin_retention",
    "check_proxy_targets",
    "make_proxy_split",
    "measure_capacity_share",
    "object_share",
    "proxy_table",
    "relative_bin",
    "run_proxy_benchmark",
    "split_seeds",
    "CapacityShare",
    "capacity_share",
    "gradient_energy",
    "object_coverage",
    "select_top",
    "token_norm",
]
