"""Per-thread keep-ratio overrides: one shared model serving requests at different ratios.

A model's ``keep_ratio_context(r)`` sets ``r`` for the calling thread only, until the ``with``
block ends; its ``keep_ratio`` reads :func:`thread_keep_ratio` first. The overrides live here,
keyed by the model's ``id``, rather than on the model, so that models stay deep-copyable and
picklable (a ``threading.local`` is neither); an entry lives only while its context (which holds
the model) is open, so an id is never reused meanwhile. Used by :class:`ImageEncoderBigLittle`
and by transformers' SAM 3 backbone (``biglittle_sam.hf.sam3_model``).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Dict, Iterator, Optional

from ..config import validate_keep_ratio

__all__ = ["thread_keep_ratio", "thread_keep_ratio_context"]

_THREAD_RATIOS = threading.local()


def thread_keep_ratio(owner: object) -> Optional[float]:
    """The calling thread's keep ratio for ``owner`` (its innermost open context), or None."""
    ratios: Optional[Dict[int, float]] = getattr(_THREAD_RATIOS, "ratios", None)
    return ratios.get(id(owner)) if ratios else None


@contextmanager
def thread_keep_ratio_context(owner: object, keep_ratio: float) -> Iterator[None]:
    """Give ``owner`` this thread's keep ratio ``keep_ratio`` inside the ``with`` block.

    Contexts nest; the ratio is validated once, on entry (``ValueError`` outside (0, 1]).
    """
    value = validate_keep_ratio(keep_ratio)
    ratios: Optional[Dict[int, float]] = getattr(_THREAD_RATIOS, "ratios", None)
    if ratios is None:
        ratios = _THREAD_RATIOS.ratios = {}
    key = id(owner)
    previous = ratios.get(key)
    ratios[key] = value
    try:
        yield
    finally:
        if previous is None:
            del ratios[key]
        else:
            ratios[key] = previous
