"""One optimizer step of the training loop: gradient accumulation under DDP, clipping, the update.

The loss of each micro-batch is the sum of its per-image losses divided by the rank's share of
the global batch (micro-batch x accumulation steps); DDP averages over ranks, so the gradient of a
step is the mean over the global batch however it is split (see ``train.loop``).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
from torch import Tensor, nn

from ..runtime.amp import autocast_context
from ..runtime.distributed import DistContext
from .ema import WeightAverage
from .optim import base_lr

__all__ = [
    "AnchoredModule",
    "accumulate_gradients",
    "all_reduce",
    "apply_update",
    "seed_all",
    "to_device",
    "wrap_for_ddp",
]


class AnchoredModule(nn.Module):
    """The task's module, with a zero that touches every trainable weight added to the loss when
    nothing else reached one (keep ratio 1 while only routers train, or a micro-batch without
    instances). Inside ``forward``, so DDP's gradient hooks see it like any other use."""

    def __init__(self, module: nn.Module, params: List[nn.Parameter]) -> None:
        super().__init__()
        self.module = module
        self._params = params  # a plain list: no second registration of the weights

    def forward(self, batch: Dict[str, Any]) -> Tuple[Tensor, Dict[str, Tensor]]:
        per_image, metrics = self.module(batch)  # (b,), {name: 0-d}
        if torch.is_grad_enabled() and not per_image.requires_grad:
            per_image = per_image + sum(p.reshape(-1)[0] for p in self._params) * 0.0
        return per_image, metrics


def wrap_for_ddp(module: nn.Module, ctx: DistContext, device: torch.device) -> nn.Module:
    """``module`` in ``DistributedDataParallel`` when there are several processes, else as is."""
    if ctx.world_size == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    # Unused parameters are normal here: at keep ratio 1 no router runs, and a prompt kind
    # that a batch lacks leaves its embeddings idle.
    return DistributedDataParallel(
        module,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=True,
    )


def to_device(batch: Dict[str, Any], device: torch.device) -> Dict[str, Any]:
    """The batch's tensors on ``device`` (other values unchanged)."""
    return {
        k: (v.to(device, non_blocking=True) if isinstance(v, Tensor) else v)
        for k, v in batch.items()
    }


def all_reduce(values: Tensor, ctx: DistContext, op: str = "sum") -> Tensor:
    """``values`` summed (or ``op="max"``) over the ranks, in place; as is for one process."""
    if ctx.world_size == 1:
        return values
    import torch.distributed as dist

    reduce_op = dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX
    dist.all_reduce(values, op=reduce_op)
    return values


def seed_all(seed: int) -> None:
    """Seed Python's, numpy's and torch's RNGs (a new run; a resume restores them instead)."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def accumulate_gradients(
    ddp: nn.Module,
    data: Iterator[Dict[str, Any]],
    device: torch.device,
    amp_dtype: Optional[torch.dtype],
    micro: int,
    accum: int,
    world: int,
    say: Optional[Callable[[str], None]] = None,
) -> Tuple[Dict[str, float], int]:
    """Forward and backward ``accum`` micro-batches, DDP syncing gradients on the last one only.

    Arguments:
      ddp: the (wrapped) module: ``forward(batch) -> (per-image loss b, metrics)``.
      data: the loader's iterator of micro-batches of ``micro`` images.
      say: writes a line for each unreadable image skipped (None: silent, as on ranks > 0).

    Returns:
      The step's values (``loss``: this rank's share of the step's loss; each metric: its mean
      over the micro-batches) and the number of unreadable images skipped.
    """
    values: Dict[str, float] = {"loss": 0.0}
    skipped = 0
    for i in range(accum):
        batch = to_device(next(data), device)
        sync = world == 1 or i == accum - 1
        with contextlib.nullcontext() if sync else ddp.no_sync():  # type: ignore[operator]
            with autocast_context(device, amp_dtype):
                per_image, metrics = ddp(batch)  # (b,), {name: 0-d}
            loss = per_image.float().sum() / (micro * accum)
            loss.backward()
        values["loss"] += float(loss.detach())
        for name, value in metrics.items():
            values[name] = values.get(name, 0.0) + float(value) / accum
        skipped_here = int((~batch["ok"]).sum())
        skipped += skipped_here
        if skipped_here and say is not None:
            for problem in batch["problems"]:
                if problem:
                    say(f"skipped an unreadable image: {problem}")
    return values, skipped


def apply_update(
    params: List[nn.Parameter],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    ema: Optional[WeightAverage],
    clip_grad: Optional[float],
    what: str,
    loss: float,
) -> Tuple[float, float]:
    """Clip the accumulated gradients, step the optimizer, the schedule and the weight average.

    Arguments:
      clip_grad: the max global gradient norm (None or 0: no clipping).
      what, loss: name the step and its loss in the error (``"distill step 12"``).

    Returns:
      (gradient norm before clipping, the learning rate the update used).

    Raises:
      FloatingPointError: a non-finite gradient norm (nothing is updated).
    """
    grad_norm = torch.nn.utils.clip_grad_norm_(params, clip_grad if clip_grad else float("inf"))
    if not torch.isfinite(grad_norm):
        raise FloatingPointError(
            f"{what}: the gradient norm is {float(grad_norm)} (loss {loss:.4g}); lower --lr, "
            "or check the data"
        )
    lr = base_lr(optimizer)
    optimizer.step()
    scheduler.step()
    if ema is not None:
        ema.update()
    return float(grad_norm), lr
