"""What the data loaders share: the error a dataset raises, and the small checks and messages
that build it.

Both :mod:`.records` (what a loader yields) and :mod:`.masks` (segmentations) import this module,
so neither has to import the other for them. The underscored helpers are private to
``biglittle_sam.data`` (and ``eval.mask_ap``, which checks detections the same way).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

__all__ = ["DatasetError"]


class DatasetError(ValueError):
    """A dataset that cannot be used as given: a missing or malformed annotation file, a bad
    path."""


def _as_int(value: Any) -> Optional[int]:
    """``value`` as an int when it is integral (JSON ints, or floats like 3.0), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _numbers(value: Any, n: Optional[int] = None) -> bool:
    """Whether ``value`` is a list of numbers (of length ``n`` when given)."""
    if not isinstance(value, (list, tuple)):
        return False
    if n is not None and len(value) != n:
        return False
    return all(_is_number(v) for v in value)


def _short(value: Any, n: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def _first(items: Sequence[str], n: int = 5) -> str:
    head = "; ".join(items[:n])
    return head + (f"; ... ({len(items)} problems in all)" if len(items) > n else "")
