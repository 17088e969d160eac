"""The toy benchmark: shapes data, a tiny SAM teacher trained from scratch, its embedding cache, a
``bl_tiny`` student distilled in two phases with its ablations, and their mIoU, end to end on CPU.

- :mod:`.settings`: :class:`ToyBenchmarkSettings`, the teacher and the shapes.
- :mod:`.pipeline`: :func:`run_toy_benchmark`, every stage from data to evaluation.
- :mod:`.report`: the targets, the markdown table and the plot.

How the default recipe was chosen is written up in ``docs/benchmarks/toy.md``.
"""

from .pipeline import run_toy_benchmark
from .report import PHASE1, check_targets, plot_toy, toy_table
from .settings import TOY_SHAPES, TOY_TEACHER, ToyBenchmarkSettings

__all__ = [
    "PHASE1",
    "TOY_SHAPES",
    "TOY_TEACHER",
    "ToyBenchmarkSettings",
    "check_targets",
    "plot_toy",
    "run_toy_benchmark",
    "toy_table",
]
