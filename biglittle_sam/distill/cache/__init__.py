"""The teacher embedding cache: one fp16 embedding per image, computed once, checked, resumable.

- :mod:`.format`: the layout, :class:`TeacherCache` (reading) and :func:`entry_problem` (checks).
- :mod:`.writer`: :func:`cache_teacher_embeddings`, the sharded, resumable writer with ``verify``.
"""

from .format import (
    CACHE_FORMAT,
    CACHE_VERSION,
    CacheError,
    TeacherCache,
    TeacherInfo,
    embedding_checksum,
    entry_path,
    entry_problem,
)
from .writer import CacheSettings, CacheWriteError, cache_teacher_embeddings, sweep_stale_temps

__all__ = [
    "CACHE_FORMAT",
    "CACHE_VERSION",
    "CacheError",
    "CacheSettings",
    "CacheWriteError",
    "TeacherCache",
    "TeacherInfo",
    "cache_teacher_embeddings",
    "embedding_checksum",
    "entry_path",
    "entry_problem",
    "sweep_stale_temps",
]
