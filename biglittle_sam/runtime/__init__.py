"""Runtime utilities shared by training, distillation, evaluation and the benchmarks.

Distributed setup (``distributed``), the progress bar (``progress``), mixed precision (``amp``)
and the hardware string of benchmark reports (``hardware``).
"""
