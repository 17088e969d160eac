"""An exponential moving average of the trainable weights (the model a run hands back).

The average starts at the initial weights and follows ``ema = d * ema + (1 - d) * weight`` after
every optimizer step, with ``d = min(decay, (1 + n) / (10 + n))`` at update ``n`` so that early
updates are not dominated by the starting point. Only trainable parameters are averaged; frozen
ones and buffers are the model's own. Its state goes into every training checkpoint, so a resumed
run continues the same average.
"""

from __future__ import annotations

import contextlib
from typing import Dict, Iterator, Mapping

import torch
from torch import Tensor, nn

__all__ = ["WeightAverage"]


class WeightAverage:
    """The running average of ``model``'s trainable parameters (fp32, on their device)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the weight average's decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.updates = 0
        self._params: Dict[str, nn.Parameter] = {
            name: p for name, p in model.named_parameters() if p.requires_grad
        }
        self.shadow: Dict[str, Tensor] = {
            name: p.detach().float().clone() for name, p in self._params.items()
        }

    def current_decay(self) -> float:
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        """Fold the current weights in (call after each optimizer step)."""
        d = self.current_decay()
        for name, p in self._params.items():
            self.shadow[name].mul_(d).add_(p.detach().float(), alpha=1.0 - d)
        self.updates += 1

    def state_dict(self) -> Dict[str, object]:
        return {
            "decay": self.decay,
            "updates": self.updates,
            "shadow": {k: v.detach().cpu().clone() for k, v in self.shadow.items()},
        }

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Restore a saved average; ValueError when it averages other parameters."""
        shadow = state["shadow"]
        assert isinstance(shadow, Mapping)
        if set(shadow) != set(self.shadow):
            missing = sorted(set(self.shadow) ^ set(shadow))[:4]
            raise ValueError(
                f"the checkpoint's weight average covers other parameters (e.g. {missing}); "
                "resume with the same trainable parts"
            )
        for name, value in shadow.items():
            self.shadow[name].copy_(value)
        self.updates = int(state["updates"])  # type: ignore[call-overload]

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """The model holds the averaged weights inside the block, its own weights after it."""
        saved = {name: p.detach().clone() for name, p in self._params.items()}
        with torch.no_grad():
            for name, p in self._params.items():
                p.copy_(self.shadow[name].to(p.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for name, p in self._params.items():
                    p.copy_(saved[name])
