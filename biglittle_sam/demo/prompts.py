"""The prompts a user has clicked: positive and negative points and a box, with undo."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np

__all__ = ["PointPrompt", "BoxPrompt", "PromptSet", "parse_prompts_json"]


@dataclass(frozen=True)
class PointPrompt:
    """A click at pixel (x, y) of the encoded image; ``positive`` False for a background point."""

    x: float
    y: float
    positive: bool = True


@dataclass(frozen=True)
class BoxPrompt:
    """A box from two corner clicks, stored as (x0, y0, x1, y1) with x0 <= x1, y0 <= y1."""

    x0: float
    y0: float
    x1: float
    y1: float

    @classmethod
    def from_corners(cls, a: Tuple[float, float], b: Tuple[float, float]) -> "BoxPrompt":
        return cls(min(a[0], b[0]), min(a[1], b[1]), max(a[0], b[0]), max(a[1], b[1]))


@dataclass
class PromptSet:
    """Prompts in the order they were given.

    SAM takes one box, so the latest box is the active one; undoing it brings back the one before.
    ``pending_corner`` is the first corner of a box still waiting for its second click.
    """

    history: List[object] = field(default_factory=list)
    pending_corner: Optional[Tuple[float, float]] = None

    def add_point(self, x: float, y: float, positive: bool = True) -> None:
        self.history.append(PointPrompt(float(x), float(y), bool(positive)))

    def add_corner(self, x: float, y: float) -> bool:
        """Record a box corner; returns True when this click completed a box."""
        if self.pending_corner is None:
            self.pending_corner = (float(x), float(y))
            return False
        box = BoxPrompt.from_corners(self.pending_corner, (float(x), float(y)))
        self.pending_corner = None
        self.history.append(box)
        return True

    def undo(self) -> bool:
        """Remove the last prompt (a pending corner first); False when there was nothing to undo."""
        if self.pending_corner is not None:
            self.pending_corner = None
            return True
        if self.history:
            self.history.pop()
            return True
        return False

    def clear(self) -> None:
        self.history.clear()
        self.pending_corner = None

    @property
    def points(self) -> List[PointPrompt]:
        return [p for p in self.history if isinstance(p, PointPrompt)]

    @property
    def box(self) -> Optional[BoxPrompt]:
        boxes = [b for b in self.history if isinstance(b, BoxPrompt)]
        return boxes[-1] if boxes else None

    @property
    def empty(self) -> bool:
        """True when there is nothing to decode (a pending corner alone is not a prompt)."""
        return not self.history

    def as_arrays(self) -> Tuple[Optional[np.ndarray], Optional[np.ndarray], Optional[np.ndarray]]:
        """(points N x 2 (x, y), labels N with 1 positive / 0 negative, box 4) or None each."""
        points = self.points
        coords = labels = None
        if points:
            coords = np.array([[p.x, p.y] for p in points], dtype=np.float32)
            labels = np.array([1 if p.positive else 0 for p in points], dtype=np.int64)
        box = self.box
        box_array = None if box is None else np.array([box.x0, box.y0, box.x1, box.y1], np.float32)
        return coords, labels, box_array

    def describe(self) -> str:
        pos = sum(p.positive for p in self.points)
        neg = len(self.points) - pos
        parts = [
            f"{n} {kind} point{'s' if n != 1 else ''}"
            for n, kind in ((pos, "positive"), (neg, "negative"))
            if n
        ]
        if self.box is not None:
            parts.append("1 box")
        if self.pending_corner is not None:
            parts.append("box: click the opposite corner")
        return ", ".join(parts) or "no prompts"


def parse_prompts_json(
    text: str,
) -> Tuple[List[Tuple[float, float, bool]], Optional[Tuple[float, float, float, float]]]:
    """``{"points": [[x, y, label], ...], "box": [x0, y0, x1, y1]}`` -> (points, box).

    Points are (x, y, positive) in image pixels; a label is 1 (positive, the default) or 0.

    Raises:
      ValueError: not JSON, or the wrong shape, with a message that says what is expected.
    """
    try:
        data = json.loads(text or "{}")
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON ({e.msg})") from None
    if not isinstance(data, dict):
        raise ValueError('expected an object like {"points": [[x, y, 1]], "box": [x0, y0, x1, y1]}')
    points = []
    for item in data.get("points") or []:
        if not (isinstance(item, (list, tuple)) and len(item) in (2, 3)):
            raise ValueError(f"a point must be [x, y] or [x, y, label], got {item!r}")
        try:
            x, y = float(item[0]), float(item[1])
            label = int(item[2]) if len(item) == 3 else 1
        except (TypeError, ValueError):
            raise ValueError(f"a point must hold numbers, got {item!r}") from None
        if label not in (0, 1):
            raise ValueError(f"a point label must be 1 (positive) or 0 (negative), got {label}")
        points.append((x, y, label == 1))
    box = data.get("box")
    if box is not None:
        if not (isinstance(box, (list, tuple)) and len(box) == 4):
            raise ValueError(f"the box must be [x0, y0, x1, y1], got {box!r}")
        try:
            box = tuple(float(v) for v in box)
        except (TypeError, ValueError):
            raise ValueError(f"the box must hold numbers, got {box!r}") from None
    return points, box
