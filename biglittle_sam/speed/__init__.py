"""Measured encoder speed: SAM ViT against big.LITTLE at several keep ratios, peers for context.

- :mod:`.rows`: :class:`BenchmarkConfig` (what to measure) and each model built ready to time.
- :mod:`.measure`: :func:`run_benchmark`, interleaved timed rounds, peak memory.
- :mod:`.report`: speedups against SAM, the JSON, the markdown table and the plot.

Optional rows: big.LITTLE with pooled keys/values (``pool_kv_ratios``), and with ``onnx`` the
exported encoders (SAM and big.LITTLE at each ratio) in onnxruntime; ``compile`` runs every
PyTorch model through ``torch.compile`` first. ``runtimes`` times every model in each of
:data:`RUNTIMES` (PyTorch eager, PyTorch int8, onnxruntime fp32 and int8), one subprocess per
runtime (:mod:`.runtimes`), with speedups against SAM in the same runtime.
"""

from .measure import run_benchmark
from .report import save_json, save_plot, to_markdown
from .rows import PEERS, RUNTIMES, BenchmarkConfig, ModelResult
from .runtimes import run_runtimes

__all__ = [
    "BenchmarkConfig",
    "ModelResult",
    "PEERS",
    "RUNTIMES",
    "run_benchmark",
    "run_runtimes",
    "save_json",
    "save_plot",
    "to_markdown",
]
