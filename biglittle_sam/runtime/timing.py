"""Timing a module's forward passes from outside, with forward hooks."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, List

import torch

__all__ = ["ModuleTimer"]


@dataclass
class ModuleTimer:
    """Wall-clock seconds spent inside ``module``'s forward calls while the ``with`` block is open,
    summed over calls (forward hooks; CUDA is synchronised around each call when ``cuda``).

    It times the encoder inside ``SamPredictor.set_image`` or ``SamAutomaticMaskGenerator``
    without changing either.
    """

    module: torch.nn.Module
    cuda: bool
    seconds: float = 0.0
    _start: float = 0.0
    _handles: List[Any] = field(default_factory=list)

    def _pre(self, *_: Any) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        self._start = time.perf_counter()

    def _post(self, *_: Any) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        self.seconds += time.perf_counter() - self._start

    def __enter__(self) -> "ModuleTimer":
        self._handles = [
            self.module.register_forward_pre_hook(self._pre),
            self.module.register_forward_hook(self._post),
        ]
        return self

    def __exit__(self, *_: Any) -> None:
        for h in self._handles:
            h.remove()
