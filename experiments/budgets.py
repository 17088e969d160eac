"""The proxy benchmark's budget checks, run before any stage starts."""

from __future__ import annotations

from typing import Any, Sequence

__all__ = ["check_budgets"]


def check_budgets(settings: Any, positive: Sequence[str]) -> None:
    """Every field in ``positive`` is at least 1, ``distill_images`` (None: the teacher's images)
    too, and ``phase2_steps`` at least 0 (0 skips phase 2).

    Raises:
      ValueError: naming the first field out of range and its value.
    """
    for name in positive:
        if getattr(settings, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(settings, name)}")
    distill = getattr(settings, "distill_images", None)  # a run without it trains on one set
    if distill is not None and distill < 1:
        raise ValueError(f"distill_images must be >= 1, got {distill}")
    if settings.phase2_steps < 0:
        raise ValueError(f"phase2_steps must be >= 0, got {settings.phase2_steps}")
