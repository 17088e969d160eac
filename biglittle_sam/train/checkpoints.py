"""The training loop's checkpoints: which one to resume from, restoring it, writing one every
``checkpoint_every`` steps (and ``step_<N>.pth`` copies), and the final model.

The file format and its checks are :mod:`.state`'s; this module decides what goes in it.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from ..checkpoint import save_model_checkpoint
from ..fileio import atomic_open
from ..runtime.distributed import DistContext
from .ema import WeightAverage
from .logging import RunningMeans
from .settings import TrainSettings, settings_to_dict
from .state import capture_rng, restore_rng, save_training_checkpoint
from .task import TrainTask

__all__ = [
    "prune_step_checkpoints",
    "resolve_resume",
    "restore_training",
    "save_final_model",
    "save_loop_checkpoint",
]


def resolve_resume(resume: Optional[str], out_dir: Path) -> Optional[Path]:
    """The checkpoint to resume from: a path, ``auto`` (``out_dir/checkpoints/last.pth`` when it
    exists), or None."""
    if resume is None:
        return None
    if resume == "auto":
        last = out_dir / "checkpoints" / "last.pth"
        return last if last.is_file() else None
    path = Path(resume)
    if not path.is_file():
        raise FileNotFoundError(f"--resume checkpoint not found: {path}")
    return path


def restore_training(
    payload: Dict[str, Any],
    sam: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    ctx: DistContext,
) -> Tuple[int, int, RunningMeans, float]:
    """Load a training checkpoint's model, optimizer, scheduler and this rank's RNG state.

    Returns:
      (step, samples seen, the running means of the unfinished metrics interval, seconds the run
      had spent before), so the next metrics line continues the interrupted one.
    """
    train = payload["train"]
    sam.load_state_dict(payload["model"])
    optimizer.load_state_dict(train["optimizer"])
    scheduler.load_state_dict(train["scheduler"])
    rng = train["rng"]
    restore_rng(rng[ctx.rank] if len(rng) == ctx.world_size else rng[0])
    saved_log = train.get("log")
    if not isinstance(saved_log, dict):  # a checkpoint written before the log was kept
        return int(train["step"]), int(train["samples_seen"]), RunningMeans(), 0.0
    running = RunningMeans.restore(saved_log["ranks"], ctx.rank, ctx.world_size)
    return int(train["step"]), int(train["samples_seen"]), running, float(saved_log["elapsed_s"])


def save_loop_checkpoint(
    task: TrainTask,
    settings: TrainSettings,
    ctx: DistContext,
    sam: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    step: int,
    samples_seen: int,
    log_state: Dict[str, Any],
    ema: Optional[WeightAverage] = None,
) -> None:
    """Gather every rank's RNG state and running means; rank 0 writes ``last.pth`` (and
    ``step_<N>.pth``).

    Arguments:
      log_state: this rank's ``{"running": RunningMeans.state(), "elapsed_s": seconds}``.
    """
    gathered = ctx.gather({"rng": capture_rng(), "running": log_state["running"]})
    if gathered is None:  # not rank 0
        return
    rng = [part["rng"] for part in gathered]
    train = {
        "task": task.name,
        "fingerprint": task.fingerprint,
        "settings": {"task": task.settings, "train": settings_to_dict(settings)},
        "step": step,
        "samples_seen": samples_seen,
        "epoch": samples_seen // len(task.dataset),
        "dataset_size": len(task.dataset),
        "world_size": ctx.world_size,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng,
        "log": {
            "ranks": [part["running"] for part in gathered],
            "elapsed_s": float(log_state["elapsed_s"]),
        },
    }
    if ema is not None:
        train["ema"] = ema.state_dict()
    ckpt_dir = Path(settings.out_dir) / "checkpoints"
    last = save_training_checkpoint(
        ckpt_dir / "last.pth", sam, task.config, task.teacher, train, **task.extra
    )
    if settings.keep_checkpoints:
        kept = ckpt_dir / f"step_{step:07d}.pth"
        with open(last, "rb") as src, atomic_open(kept, "wb") as dst:
            shutil.copyfileobj(src, dst)
        if settings.keep_last:
            prune_step_checkpoints(ckpt_dir, settings.keep_last)


def prune_step_checkpoints(ckpt_dir: Path, keep: int) -> List[Path]:
    """Delete all but the newest ``keep`` ``step_<N>.pth`` (by N); returns the deleted files."""
    steps = []
    for path in ckpt_dir.glob("step_*.pth"):
        number = path.stem[len("step_") :]
        if number.isdigit():
            steps.append((int(number), path))
    steps.sort()
    doomed = [path for _, path in steps[:-keep]] if len(steps) > keep else []
    for path in doomed:
        path.unlink(missing_ok=True)
    return doomed


def save_final_model(
    task: TrainTask,
    sam: nn.Module,
    ema: Optional[WeightAverage],
    out_dir: Path,
    step: int,
    steps_this_run: int,
) -> Path:
    """Write ``<out_dir>/model.pth`` of a finished run (the weight average when there is one).

    A finished run resumed (no step this run) keeps the model it already wrote: keeping the file's
    bytes keeps whatever was keyed by its checksum valid (a teacher cache, a student's teacher).
    """
    existing = out_dir / "model.pth"
    if steps_this_run == 0 and existing.is_file():
        return existing
    with ema.applied() if ema is not None else contextlib.nullcontext():
        return save_model_checkpoint(
            existing,
            sam,
            task.config,
            teacher=task.teacher,
            training={
                "task": task.name,
                "steps": step,
                "settings": task.settings,
                "weights": f"EMA {ema.decay:g}" if ema is not None else "last",
            },
            **task.extra,
        )
