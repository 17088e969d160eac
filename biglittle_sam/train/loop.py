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

One optimizer step is :mod:`.step`'s; writing and restoring checkpoints is :mod:`.checkpoints`'.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..fileio import atomic_write_json, sweep_temp_files
from ..runtime.amp import keep_norms_fp32, resolve_amp
from ..runtime.distributed import DistContext
from ..runtime.progress import Progress, format_duration
from .checkpoints import resolve_resume, restore_training, save_final_model, save_loop_checkpoint
from .data import StreamSampler, collate_items
from .ema import WeightAverage
from .logging import MetricsLog, RunningMeans, plot_losses
from .optim import build_optimizer, build_scheduler
from .parts import trainable_summary
from .settings import TrainSettings
from .state import check_resume_compatible, load_training_checkpoint
from .step import (
    AnchoredModule,
    accumulate_gradients,
    all_reduce,
    apply_update,
    seed_all,
    wrap_for_ddp,
)
from .task import TrainResult, TrainTask

__all__ = ["TrainTask", "TrainResult", "run_training", "resolve_resume"]

Forward = Callable[[Dict[str, Any]], Tuple[Tensor, Dict[str, Tensor]]]  # a task module's forward


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


@dataclass
class _Run:
    """One process's run: what it trains, and the counters it carries from step to step."""

    task: TrainTask
    settings: TrainSettings
    ctx: DistContext
    device: torch.device
    micro: int  # images per micro-batch on this process
    sam: nn.Module
    module: nn.Module
    params: List[nn.Parameter]  # the trainable weights
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    amp_dtype: Optional[torch.dtype]
    ema: Optional[WeightAverage] = None
    step: int = 0
    samples_seen: int = 0
    running: RunningMeans = field(default_factory=RunningMeans)  # the metrics line in progress
    elapsed_before: float = 0.0  # seconds spent by the runs this one resumes
    start_step: int = 0  # the step this run began at
    started: float = 0.0  # time.perf_counter() at this run's first step
    skipped: int = 0  # unreadable images this run skipped
    last_loss: Optional[float] = None
    history: List[Dict[str, Any]] = field(default_factory=list)

    @property
    def last_path(self) -> Path:
        """The checkpoint every save overwrites."""
        return Path(self.settings.out_dir) / "checkpoints" / "last.pth"


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
    micro = _micro_batch(settings, ctx.world_size)
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    resume_path = resolve_resume(settings.resume, out_dir)
    payload: Optional[Dict[str, Any]] = None
    if resume_path is not None:
        payload = load_training_checkpoint(resume_path)
        check_resume_compatible(payload, resume_path, task.name, task.fingerprint)
    run = _prepare(task, settings, ctx, device, micro, payload)
    ddp = wrap_for_ddp(AnchoredModule(run.module, run.params), ctx, device)
    loader = _loader(run)
    # A run stopped between two lines wrote an interim line at its last step; its checkpoint
    # holds the unfinished interval, so the resumed run drops that line and writes the full one.
    kept_through = run.step - 1 if run.running.steps else run.step
    log = MetricsLog(
        out_dir, ctx.is_main, settings.tensorboard, resume_step=kept_through if payload else None
    )
    stop_at = settings.steps
    if settings.stop_after is not None:
        stop_at = min(stop_at, run.step + settings.stop_after)
    progress = _open_progress(run, resume_path if payload is not None else None, began)
    run.started = time.perf_counter()
    data: Iterator[Dict[str, Any]] = iter(loader)
    with _StopRequest() as stop_request:
        _train(run, ddp, data, log, progress, stop_at, stop_request)
    progress.close()
    log.close()
    wall = time.perf_counter() - run.started
    model_path, plot_path = _finish(run, log, progress, wall)
    if ctx.world_size > 1:
        import torch.distributed as dist

        dist.barrier()
    last_loss = run.last_loss
    return TrainResult(
        step=run.step,
        finished=run.step >= settings.steps,
        out_dir=out_dir,
        last_checkpoint=run.last_path,
        model_path=model_path,
        metrics_path=log.path,
        plot_path=plot_path,
        last_loss=last_loss if last_loss is None or math.isfinite(last_loss) else None,
        wall_s=wall,
        images_per_s=(run.step - run.start_step) * settings.batch_size / max(wall, 1e-9),
        skipped_images=run.skipped,
        history=run.history,
    )


def _micro_batch(settings: TrainSettings, world: int) -> int:
    """Images per micro-batch: the global batch over processes and accumulation steps."""
    accum = settings.grad_accum
    if settings.batch_size % (accum * world):
        raise ValueError(
            f"batch_size {settings.batch_size} must be divisible by grad_accum ({accum}) x "
            f"processes ({world}); each process takes an equal share of every step"
        )
    return settings.batch_size // (accum * world)


def _prepare(
    task: TrainTask,
    settings: TrainSettings,
    ctx: DistContext,
    device: torch.device,
    micro: int,
    payload: Optional[Dict[str, Any]],
) -> _Run:
    """The model on ``device`` in training mode, its optimizer and schedule, and the state of the
    checkpoint ``payload`` (a resume) or fresh seeds (a new run)."""
    sam, module = task.sam.to(device), task.module.to(device)
    module.train()
    amp_dtype = resolve_amp(settings.amp, device)
    if amp_dtype is not None:
        keep_norms_fp32(module)
    params = [p for p in sam.parameters() if p.requires_grad]
    optimizer = build_optimizer(sam, settings, task.lr_scales)
    scheduler = build_scheduler(optimizer, settings)
    run = _Run(
        task, settings, ctx, device, micro, sam, module, params, optimizer, scheduler, amp_dtype
    )
    if payload is not None:
        run.step, run.samples_seen, run.running, run.elapsed_before = restore_training(
            payload, sam, optimizer, scheduler, ctx
        )
    else:
        seed_all(settings.seed)
    run.start_step = run.step
    if settings.ema_decay > 0:
        run.ema = WeightAverage(sam, settings.ema_decay)
        if payload is not None:
            run.ema.load_state_dict(payload["train"]["ema"])
    return run


def _loader(run: _Run) -> DataLoader:
    """This rank's micro-batches, continuing the global stream where the run stands."""
    settings, ctx, dataset = run.settings, run.ctx, run.task.dataset
    sampler = StreamSampler(
        len(dataset), run.micro, ctx.rank, ctx.world_size, settings.seed, start=run.samples_seen
    )
    return DataLoader(
        dataset,
        batch_size=run.micro,
        sampler=sampler,
        num_workers=settings.num_workers,
        collate_fn=collate_items,
        pin_memory=run.device.type == "cuda",
    )


def _open_progress(run: _Run, resumed_from: Optional[Path], began: float) -> Progress:
    """Sweep stale temporary files, write ``settings.json`` and open the progress bar, with a
    line that says what trains on what (rank 0 alone writes)."""
    task, settings, ctx = run.task, run.settings, run.ctx
    out_dir = Path(settings.out_dir)
    # Writes killed mid-way (SIGKILL, power loss) leave temporary files; none is newer than us.
    folders = (out_dir, out_dir / "checkpoints")
    swept = [p for d in folders for p in sweep_temp_files(d, began)] if ctx.is_main else []
    if ctx.is_main and task.recipe is not None:
        atomic_write_json(out_dir / "settings.json", task.recipe)
    progress = Progress(
        settings.steps,
        desc=task.name,
        enabled=settings.progress and ctx.is_main,
        unit="step",
        initial=run.step,
    )
    if ctx.is_main and settings.progress:
        counts = trainable_summary(run.sam)
        progress.write(
            f"{task.name}: {counts['trainable']:,} of {counts['total']:,} parameters train; "
            f"{len(task.dataset)} images; global batch {settings.batch_size} = {ctx.world_size} "
            f"process(es) x {settings.grad_accum} accumulation x {run.micro}; "
            + (f"resuming at step {run.step} from {resumed_from}" if resumed_from else "new run")
        )
        if swept:
            progress.write(f"removed {len(swept)} stale temporary file(s): {swept[0].name}, ...")
    return progress


def _train(
    run: _Run,
    ddp: nn.Module,
    data: Iterator[Dict[str, Any]],
    log: MetricsLog,
    progress: Progress,
    stop_at: int,
    stop_request: _StopRequest,
) -> None:
    """Steps until ``stop_at`` or a stop signal, with metrics lines and checkpoints on their
    grids, at ``stop_at`` and on the signal."""
    settings, ctx = run.settings, run.ctx
    while run.step < stop_at:
        values, lr = _step(run, ddp, data, progress)
        run_elapsed = time.perf_counter() - run.started
        images_per_s = (run.step - run.start_step) * settings.batch_size / max(run_elapsed, 1e-9)
        progress.update(
            1,
            postfix={
                "loss": f"{values['loss']:.4g}",
                "lr": f"{lr:.3g}",
                "img/s": f"{images_per_s:.1f}",
            },
        )
        # A line every log_every steps and at the end; a run stopped early (stop_after) also
        # writes an interim line, but keeps the interval going in its checkpoint.
        on_grid = run.step % settings.log_every == 0 or run.step == settings.steps
        if on_grid or run.step == stop_at:
            _log_line(run, log, lr, images_per_s, run_elapsed)
            if on_grid:
                run.running.reset()
        stop_now = stop_request.requested
        if ctx.world_size > 1:
            flag = all_reduce(torch.tensor([float(stop_now)]), ctx, op="max")
            stop_now = bool(flag.item() > 0)
        if run.step % settings.checkpoint_every == 0 or run.step == stop_at or stop_now:
            _save_checkpoint(run)
            if ctx.is_main and settings.progress:
                progress.write(f"step {run.step}: checkpoint {run.last_path}")
        if stop_now:
            if ctx.is_main:
                progress.write(
                    f"stopped by a signal after step {run.step}; resume with --resume "
                    f"{run.last_path}"
                )
            break


def _step(
    run: _Run, ddp: nn.Module, data: Iterator[Dict[str, Any]], progress: Progress
) -> Tuple[Dict[str, float], float]:
    """One optimizer step; returns its values (loss, metrics, grad norm, the task's numbers) and
    the learning rate it used."""
    task, settings, ctx = run.task, run.settings, run.ctx
    logged = task.begin_step(run.step) if task.begin_step is not None else {}
    run.optimizer.zero_grad(set_to_none=True)
    values, skipped = accumulate_gradients(
        ddp,
        data,
        run.device,
        run.amp_dtype,
        run.micro,
        settings.grad_accum,
        ctx.world_size,
        say=progress.write if ctx.is_main else None,
    )
    run.skipped += skipped
    run.running.skipped += skipped
    grad_norm, lr = apply_update(
        run.params,
        run.optimizer,
        run.scheduler,
        run.ema,
        settings.clip_grad,
        f"{task.name} step {run.step}",
        values["loss"],
    )
    run.step += 1
    run.samples_seen += settings.batch_size
    values["grad_norm"] = grad_norm
    values.update({k: float(v) for k, v in logged.items()})
    run.running.add(values)
    return values, lr


def _log_line(
    run: _Run, log: MetricsLog, lr: float, images_per_s: float, run_elapsed: float
) -> None:
    """Write the metrics line of the interval that ends at this step: every rank's means."""
    names = sorted(run.running.sums)
    totals = torch.tensor([run.running.sums[n] for n in names] + [float(run.running.skipped)])
    totals = all_reduce(totals, run.ctx)
    record: Dict[str, Any] = {"step": run.step}
    for n, v in zip(names, totals[:-1].tolist()):
        record[n] = v / (run.running.steps * run.ctx.world_size)
    record.update(
        {
            "lr": lr,
            "epoch": run.samples_seen / len(run.task.dataset),
            "images_per_s": images_per_s,
            "elapsed_s": run.elapsed_before + run_elapsed,
            "skipped_images": int(totals[-1]),
        }
    )
    log.write(record)
    run.history.append(record)
    run.last_loss = record["loss"]


def _save_checkpoint(run: _Run) -> None:
    """``last.pth`` (and ``step_<N>.pth``) with the unfinished metrics interval."""
    log_state = {
        "running": run.running.state(),
        "elapsed_s": run.elapsed_before + time.perf_counter() - run.started,
    }
    save_loop_checkpoint(
        run.task,
        run.settings,
        run.ctx,
        run.sam,
        run.optimizer,
        run.scheduler,
        run.step,
        run.samples_seen,
        log_state,
        run.ema,
    )


def _finish(
    run: _Run, log: MetricsLog, progress: Progress, wall: float
) -> Tuple[Optional[Path], Optional[Path]]:
    """Rank 0 writes the final model (once finished) and the loss plot; returns their paths."""
    task, settings = run.task, run.settings
    if not run.ctx.is_main:
        return None, None
    out_dir = Path(settings.out_dir)
    model_path: Optional[Path] = None
    plot_path: Optional[Path] = None
    if run.step >= settings.steps:
        steps_now = run.step - run.start_step
        model_path = save_final_model(task, run.sam, run.ema, out_dir, run.step, steps_now)
    try:
        plot_path = plot_losses(
            log.path, out_dir / "loss.png", f"{task.name}: {task.config.name}, {run.step} steps"
        )
    except ImportError as e:
        progress.write(f"no loss plot: {e} (pip install matplotlib)")
    if settings.progress:
        progress.write(
            f"{task.name}: {run.step - run.start_step} steps in {format_duration(wall)}"
            + (f"; model {model_path}" if model_path else "")
        )
    return model_path, plot_path
