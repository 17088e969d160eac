"""Groundwork of the proxy benchmark (issue 14): the toy's pipeline at a geometry close to SAM's.

- :mod:`.routing`: training-free routers (patch gradient energy, token norm) and the encoder's
  static top-k selection, to compare a learned router with a heuristic.
- :mod:`.capacity`: the share of big-block capacity spent on object tokens against the objects'
  share of the image.
"""

from .capacity import CapacityShare, capacity_share, object_coverage
from .routing import gradient_energy, select_top, token_norm

__all__ = [
    "CapacityShare",
    "capacity_share",
    "gradient_energy",
    "object_coverage",
    "select_top",
    "token_norm",
]
