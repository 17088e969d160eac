"""Distillation: a teacher embedding cache, and phase-1 / phase-2 distillation of a big.LITTLE
student from its SAM teacher through the shared training loop (``biglittle_sam.train``).

- :func:`cache_teacher_embeddings` (``cache.py``): fp16 teacher embeddings on disk, resumable,
  atomic, sharded under torchrun, with a ``verify`` pass that recomputes bad entries.
- :func:`run_distillation` (``distill.py``): phase 1 (MSE + cosine on the valid region, keep ratio
  drawn per step) and phase 2 (prompts in the loop, teacher masks as targets).

The proxy benchmark, which runs the whole pipeline on synthetic shapes, is ``experiments.proxy``
in the repository (not installed).
"""

from .cache import (
    CacheError,
    CacheSettings,
    CacheWriteError,
    TeacherCache,
    cache_teacher_embeddings,
    embedding_checksum,
    entry_problem,
)
from .distill import (
    DEFAULT_KEEP_RATIOS,
    DistillModule,
    DistillSettings,
    TeacherHeads,
    build_distill_task,
    run_distillation,
)
from .losses import embedding_distill_loss, valid_region
from .routing import RouterExploration

__all__ = [
    "DEFAULT_KEEP_RATIOS",
    "CacheError",
    "CacheSettings",
    "CacheWriteError",
    "DistillModule",
    "DistillSettings",
    "RouterExploration",
    "TeacherCache",
    "TeacherHeads",
    "build_distill_task",
    "cache_teacher_embeddings",
    "embedding_checksum",
    "embedding_distill_loss",
    "entry_problem",
    "run_distillation",
    "valid_region",
]
