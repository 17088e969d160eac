"""The one training loop that distillation and fine-tuning share.

A task (``distill.build_distill_task``, ``train.finetune.build_finetune_task``) supplies the model,
a module whose ``forward(batch)`` returns one loss per image, the data, and the fingerprint that a
resumed run must match. The loop does the rest:

- AdamW (decay / no-decay groups), linear warm-up then cosine decay, gradient accumulation,
  gradient clipping, bf16 autocast on CUDA with LayerNorm in fp32;
- DDP under torchrun (NCCL on GPU, gloo on CPU) with the deterministic stream sampler of
  ``train.data``; rank 0 alone writes checkpoints, metrics and plots;
- an atomic checkpoint every ``checkpoint_every`` steps and at the end; ``resume`` restores model,
  optimizer, scheduler, every RNG and the data position, so N steps + resume + M steps equals
  N + M steps;
- JSONL metrics every ``log_every`` steps, optional TensorBoard, a progress bar with loss, lr,
  images/s and ETA, and a PNG loss plot at the end.

Loss normalization: each rank's loss is the sum of its per-image losses divided by its share of
the global batch (micro-batch x accumulation steps); DDP averages over ranks. The gradient of a
step is therefore the mean over the global batch however it is split over processes and
accumulation steps, and an unreadable image (loss 0, skipped) changes no other image's weight.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..checkpoint import save_model_checkpoint
from ..config import SamViTConfig
from ..fileio import atomic_open, atomic_write_json, sweep_temp_files
from ..runtime.amp import autocast_context, keep_norms_fp32, resolve_amp
from ..runtime.distributed import DistContext
from ..runtime.progress import Progress, format_duration
from .data import StreamSampler, TrainImages, collate_items
from .ema import WeightAverage
from .logging import MetricsLog, RunningMeans, plot_losses
from .optim import base_lr, build_optimizer, build_scheduler
from .parts import trainable_summary
from .settings import TrainSettings, settings_to_dict
from .state import (
    capture_rng,
    check_resume_compatible,
    load_training_checkpoint,
    restore_rng,
    save_training_checkpoint,
)

__all__ = ["TrainTask", "TrainResult", "run_training", "resolve_resume"]

Forward = Callable[[Dict[str, Any]], Tuple[Tensor, Dict[str, Tensor]]]


@dataclass
class TrainTask:
    """What one kind of training supplies to :func:`run_training`.

    Attributes:
      name: ``distill`` or ``finetune`` (a checkpoint of one cannot resume the other).
      sam: the ``Sam`` being trained; its ``requires_grad`` flags say which parts train.
      module: ``forward(batch) -> (per-image loss B, metrics)``; holds ``sam`` (and any frozen
        teacher parts). DDP wraps this module.
      dataset: the training items.
      config: the model config, stored in every checkpoint.
      teacher: the teacher tag stored in every checkpoint.
      fingerprint: what a resumed run must match exactly (model config, numeric settings,
        teacher checksum, data size).
      settings: every setting of the run, recorded in checkpoints.
      begin_step: called before each step with the step index (sets the keep ratio); returns
        numbers to log.
      extra: plain metadata for every checkpoint and the final model (``teacher_sha256``, ...).
      lr_scales: (name substring, factor) pairs: those parameters train at factor x lr.
      recipe: the run's resolved settings as a recipe file reads them (``--config``); written to
        ``<out_dir>/settings.json`` when the run starts, so a running job's settings can be read
        and reused. None writes nothing.
    """

    name: str
    sam: nn.Module
    module: nn.Module
    dataset: TrainImages
    config: SamViTConfig
    teacher: Optional[str]
    fingerprint: Dict[str, Any]
    settings: Dict[str, Any]
    begin_step: Optional[Callable[[int], Dict[str, float]]] = None
    extra: Dict[str, Any] = field(default_factory=dict)
    lr_scales: Tuple[Tuple[str, float], ...] = ()
    recipe: Optional[Dict[str, Any]] = None


@dataclass
class TrainResult:
    """How a run ended (returned on every rank; paths are written by rank 0)."""

    step: int
    finished: bool  # reached ``steps`` (False after stop_after or a stop signal)
    out_dir: Path
    last_checkpoint: Path
    model_path: Optional[Path]  # the final model checkpoint, once finished
    metrics_path: Path
    plot_path: Optional[Path]
    last_loss: Optional[float]
    wall_s: float
    images_per_s: float
    skipped_images: int
    history: List[Dict[str, Any]] = field(default_factory=list)


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


class _StopRequest:
    """SIGTERM / SIGINT ask the loop to stop after the current step, with a checkpoint."""

    def __init__(self) -> None:
        self.requested = False
        self._old: Dict[int, Any] = {}

    def __enter__(self) -> "_StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.getsignal(sig)
                signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:  # a second signal: stop at once
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *_: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


class _Anchored(nn.Module):
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


def _to_device(batch: Dict[str, Any], device: torch.device) -> Dict[str, Any]:
    return {
        k: (v.to(device, non_blocking=True) if isinstance(v, Tensor) else v)
        for k, v in batch.items()
    }


def _all_reduce(values: Tensor, ctx: DistContext, op: str = "sum") -> Tensor:
    if ctx.world_size == 1:
        return values
    import torch.distributed as dist

    reduce_op = dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX
    dist.all_reduce(values, op=reduce_op)
    return values


def _seed_all(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def run_training(
    task: TrainTask, settings: TrainSettings, ctx: DistContext, device: torch.device
) -> TrainResult:
    """Train ``task`` with ``settings`` on this process's ``device`` (see the module docstring).

    Raises:
      CheckpointError: ``settings.resume`` names a checkpoint of another task or configuration
        (before any step runs).
      ValueError: a batch size the processes and accumulation steps do not divide.
      FloatingPointError: a non-finite gradient (the message names the step).
    """
    began = time.time()
    out_dir = Path(settings.out_dir)
    ckpt_dir = out_dir / "checkpoints"
    world, accum = ctx.world_size, settings.grad_accum
    if settings.batch_size % (accum * world):
        raise ValueError(
            f"batch_size {settings.batch_size} must be divisible by grad_accum ({accum}) x "
            f"processes ({world}); each process takes an equal share of every step"
        )
    micro = settings.batch_size // (accum * world)
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    resume_path = resolve_resume(settings.resume, out_dir)
    payload: Optional[Dict[str, Any]] = None
    if resume_path is not None:
        payload = load_training_checkpoint(resume_path)
        check_resume_compatible(payload, resume_path, task.name, task.fingerprint)

    sam, module = task.sam.to(device), task.module.to(device)
    module.train()
    amp_dtype = resolve_amp(settings.amp, device)
    if amp_dtype is not None:
        keep_norms_fp32(module)
    params = [p for p in sam.parameters() if p.requires_grad]
    optimizer = build_optimizer(sam, settings, task.lr_scales)
    scheduler = build_scheduler(optimizer, settings)
    step, samples_seen = 0, 0
    if payload is not None:
        train = payload["train"]
        sam.load_state_dict(payload["model"])
        optimizer.load_state_dict(train["optimizer"])
        scheduler.load_state_dict(train["scheduler"])
        step, samples_seen = int(train["step"]), int(train["samples_seen"])
        rng = train["rng"]
        restore_rng(rng[ctx.rank] if len(rng) == world else rng[0])
    else:
        _seed_all(settings.seed)
    # What the metrics lines continue from: the interval's sums and the time spent before.
    saved_log = payload["train"].get("log") if payload is not None else None
    running = RunningMeans()
    elapsed_before = 0.0
    if isinstance(saved_log, dict):
        running = RunningMeans.restore(saved_log["ranks"], ctx.rank, world)
        elapsed_before = float(saved_log["elapsed_s"])
    ema = WeightAverage(sam, settings.ema_decay) if settings.ema_decay > 0 else None
    if ema is not None and payload is not None:
        ema.load_state_dict(payload["train"]["ema"])

    ddp: nn.Module = _Anchored(module, params)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        # Unused parameters are normal here: at keep ratio 1 no router runs, and a prompt kind
        # that a batch lacks leaves its embeddings idle.
        ddp = DistributedDataParallel(
            ddp,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True,
        )

    sampler = StreamSampler(
        len(task.dataset), micro, ctx.rank, world, settings.seed, start=samples_seen
    )
    loader = DataLoader(
        task.dataset,
        batch_size=micro,
        sampler=sampler,
        num_workers=settings.num_workers,
        collate_fn=collate_items,
        pin_memory=device.type == "cuda",
    )
    # A run stopped between two lines wrote an interim line at its last step; its checkpoint
    # holds the unfinished interval, so the resumed run drops that line and writes the full one.
    kept_through = step - 1 if running.steps else step
    log = MetricsLog(
        out_dir, ctx.is_main, settings.tensorboard, resume_step=kept_through if payload else None
    )
    stop_at = settings.steps
    if settings.stop_after is not None:
        stop_at = min(stop_at, step + settings.stop_after)
    # Writes killed mid-way (SIGKILL, power loss) leave temporary files; none is newer than us.
    swept = (
        [p for d in (out_dir, ckpt_dir) for p in sweep_temp_files(d, began)] if ctx.is_main else []
    )
    if ctx.is_main and task.recipe is not None:
        atomic_write_json(out_dir / "settings.json", task.recipe)
    progress = Progress(
        settings.steps,
        desc=task.name,
        enabled=settings.progress and ctx.is_main,
        unit="step",
        initial=step,
    )
    if ctx.is_main and settings.progress:
        counts = trainable_summary(sam)
        progress.write(
            f"{task.name}: {counts['trainable']:,} of {counts['total']:,} parameters train; "
            f"{len(task.dataset)} images; global batch {settings.batch_size} = {world} "
            f"process(es) x {accum} accumulation x {micro}; "
            + (f"resuming at step {step} from {resume_path}" if payload else "new run")
        )
        if swept:
            progress.write(f"removed {len(swept)} stale temporary file(s): {swept[0].name}, ...")

    start_step = step
    started = time.perf_counter()
    skipped = 0
    last_loss: Optional[float] = None
    history: List[Dict[str, Any]] = []
    last_path = ckpt_dir / "last.pth"
    data: Iterator[Dict[str, Any]] = iter(loader)
    with _StopRequest() as stop_request:
        while step < stop_at:
            logged = task.begin_step(step) if task.begin_step is not None else {}
            optimizer.zero_grad(set_to_none=True)
            step_values: Dict[str, float] = {"loss": 0.0}
            for i in range(accum):
                batch = _to_device(next(data), device)
                sync = world == 1 or i == accum - 1
                with contextlib.nullcontext() if sync else ddp.no_sync():  # type: ignore[operator]
                    with autocast_context(device, amp_dtype):
                        per_image, metrics = ddp(batch)  # (b,), {name: 0-d}
                    loss = per_image.float().sum() / (micro * accum)
                    loss.backward()
                step_values["loss"] += float(loss.detach())
                for name, value in metrics.items():
                    step_values[name] = step_values.get(name, 0.0) + float(value) / accum
                skipped_here = int((~batch["ok"]).sum())
                skipped += skipped_here
                running.skipped += skipped_here
                if skipped_here and ctx.is_main:
                    for problem in batch["problems"]:
                        if problem:
                            progress.write(f"skipped an unreadable image: {problem}")
            max_norm = settings.clip_grad if settings.clip_grad else float("inf")
            grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
            if not torch.isfinite(grad_norm):
                raise FloatingPointError(
                    f"{task.name} step {step}: the gradient norm is {float(grad_norm)} "
                    f"(loss {step_values['loss']:.4g}); lower --lr, or check the data"
                )
            lr = base_lr(optimizer)
            optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.update()
            step += 1
            samples_seen += settings.batch_size
            step_values["grad_norm"] = float(grad_norm)
            step_values.update({k: float(v) for k, v in logged.items()})
            running.add(step_values)
            run_elapsed = time.perf_counter() - started
            images_per_s = (step - start_step) * settings.batch_size / max(run_elapsed, 1e-9)
            progress.update(
                1,
                postfix={
                    "loss": f"{step_values['loss']:.4g}",
                    "lr": f"{lr:.3g}",
                    "img/s": f"{images_per_s:.1f}",
                },
            )

            # A line every log_every steps and at the end; a run stopped early (stop_after) also
            # writes an interim line, but keeps the interval going in its checkpoint.
            on_grid = step % settings.log_every == 0 or step == settings.steps
            if on_grid or step == stop_at:
                names = sorted(running.sums)
                totals = torch.tensor([running.sums[n] for n in names] + [float(running.skipped)])
                totals = _all_reduce(totals, ctx)
                record: Dict[str, Any] = {"step": step}
                for n, v in zip(names, totals[:-1].tolist()):
                    record[n] = v / (running.steps * world)
                record.update(
                    {
                        "lr": lr,
                        "epoch": samples_seen / len(task.dataset),
                        "images_per_s": images_per_s,
                        "elapsed_s": elapsed_before + run_elapsed,
                        "skipped_images": int(totals[-1]),
                    }
                )
                log.write(record)
                history.append(record)
                last_loss = record["loss"]
                if on_grid:
                    running.reset()

            stop_now = stop_request.requested
            if world > 1:
                flag = _all_reduce(torch.tensor([float(stop_now)]), ctx, op="max")
                stop_now = bool(flag.item() > 0)
            if step % settings.checkpoint_every == 0 or step == stop_at or stop_now:
                log_state = {
                    "running": running.state(),
                    "elapsed_s": elapsed_before + time.perf_counter() - started,
                }
                _checkpoint(
                    task,
                    settings,
                    ctx,
                    sam,
                    optimizer,
                    scheduler,
                    step,
                    samples_seen,
                    log_state,
                    ema,
                )
                if ctx.is_main and settings.progress:
                    progress.write(f"step {step}: checkpoint {last_path}")
            if stop_now:
                if ctx.is_main:
                    progress.write(
                        f"stopped by a signal after step {step}; resume with --resume "
                        f"{last_path}"
                    )
                break
    progress.close()
    log.close()

    wall = time.perf_counter() - started
    finished = step >= settings.steps
    model_path: Optional[Path] = None
    plot_path: Optional[Path] = None
    if ctx.is_main:
        existing = out_dir / "model.pth"
        if finished and step == start_step and existing.is_file():
            # A finished run resumed: its model is already written. Keeping the file's bytes keeps
            # whatever was keyed by its checksum valid (a teacher cache, a student's teacher).
            model_path = existing
        elif finished:
            with ema.applied() if ema is not None else contextlib.nullcontext():
                model_path = save_model_checkpoint(
                    out_dir / "model.pth",
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
        try:
            plot_path = plot_losses(
                log.path, out_dir / "loss.png", f"{task.name}: {task.config.name}, {step} steps"
            )
        except ImportError as e:
            progress.write(f"no loss plot: {e} (pip install matplotlib)")
        if settings.progress:
            progress.write(
                f"{task.name}: {step - start_step} steps in {format_duration(wall)}"
                + (f"; model {model_path}" if model_path else "")
            )
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    images_per_s = (step - start_step) * settings.batch_size / max(wall, 1e-9)
    return TrainResult(
        step=step,
        finished=finished,
        out_dir=out_dir,
        last_checkpoint=last_path,
        model_path=model_path,
        metrics_path=log.path,
        plot_path=plot_path,
        last_loss=last_loss if last_loss is None or math.isfinite(last_loss) else None,
        wall_s=wall,
        images_per_s=images_per_s,
        skipped_images=skipped,
        history=history,
    )


def _checkpoint(
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
            _prune_step_checkpoints(ckpt_dir, settings.keep_last)


def _prune_step_checkpoints(ckpt_dir: Path, keep: int) -> List[Path]:
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
