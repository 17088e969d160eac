"""Runtime utilities shared by training, distillation, evaluation and the benchmarks.

Distributed setup (``distributed``), the progress bar (``progress``) and mixed precision (``amp``).
"""
