"""Sharding an evaluation over ``torchrun`` processes and gathering the results on rank 0.

Rank r of W takes images r, r + W, r + 2W, ... . Each image is scored exactly as in a single
process (its prompt batches depend only on the image), and rank 0 puts the gathered per-image
results back in dataset order, so every number equals a single-process run's (on CPU, with the
same number of threads per process: torchrun workers get OMP_NUM_THREADS=1).

Backends: NCCL when the device is CUDA (each rank on ``cuda:LOCAL_RANK``), gloo on CPU.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

import torch

__all__ = ["DistContext", "init_distributed", "resolve_device"]


def resolve_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.

    Under torchrun a bare ``cuda`` becomes ``cuda:LOCAL_RANK``.

    Raises:
      ValueError: for an unknown name, or CUDA asked for where there is none.
    """
    text = (device or "auto").strip().lower()
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return torch.device("cpu")
    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for, but CUDA is not available here")
        if text == "cuda":
            index = local_rank
        else:
            try:
                index = int(text.split(":", 1)[1])
            except (IndexError, ValueError):
                raise ValueError(f"unknown device {device!r}; expected auto, cpu, cuda or cuda:N")
        if index >= torch.cuda.device_count():
            raise ValueError(
                f"device cuda:{index} asked for, but only {torch.cuda.device_count()} GPUs are "
                "visible (one per torchrun process is needed)"
            )
        return torch.device("cuda", index)
    raise ValueError(f"unknown device {device!r}; expected auto, cpu, cuda or cuda:N")


@dataclass
class DistContext:
    """This process's place in the run (rank 0 of 1 when not launched by torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: Optional[str] = None
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> List[int]:
        """The dataset indices this rank evaluates: rank, rank + W, ... below ``n``."""
        return list(range(self.rank, n, self.world_size))

    def gather(self, obj: Any) -> Optional[List[Any]]:
        """Every rank's ``obj`` (picklable) as a list on rank 0, in rank order; None elsewhere."""
        if self.world_size == 1:
            return [obj]
        import torch.distributed as dist

        out: Optional[List[Any]] = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if self.world_size == 1:
            return obj
        import torch.distributed as dist

        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        """Tear down the process group if :func:`init_distributed` created it."""
        if self.owns_group:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self.owns_group = False


def init_distributed(
    device: str = "auto", timeout_minutes: float = 60.0
) -> Tuple[DistContext, torch.device]:
    """Join the torchrun process group (from ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``), if any.

    Returns:
      The context and this rank's device. A plain ``python`` run gives rank 0 of 1 and creates no
      process group; an already initialized group is used as it is.
    """
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():
        ctx = DistContext(
            rank=dist.get_rank(),
            world_size=dist.get_world_size(),
            local_rank=local_rank,
            backend=str(dist.get_backend()),
        )
        return ctx, resolve_device(device, local_rank)
    if world <= 1:
        return DistContext(), resolve_device(device, 0)
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    dev = resolve_device(device, local_rank)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    ctx = DistContext(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=local_rank,
        backend=backend,
        owns_group=True,
    )
    return ctx, dev
