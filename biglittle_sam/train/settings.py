"""The settings of the shared training loop, used by distillation and fine-tuning alike.

One frozen dataclass; every field has a one-line reason, which is also its ``--help`` line
(``train.cli.add_train_arguments``). The command-line tools pass on only the flags a user gave
(``dataclasses.replace``), so these defaults and the task defaults in ``distill.DistillSettings`` /
``train.FinetuneSettings`` are the only defaults.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import numpy as np

from ..runtime.cli import flag

__all__ = [
    "TrainSettings",
    "AMP_MODES",
    "RESUME_FREE_FIELDS",
    "settings_to_dict",
    "fingerprint_settings",
    "without_later_defaults",
    "LATER_FIELDS",
    "keep_ratio_for_step",
]

AMP_MODES = ("auto", "bf16", "off")

# Fields a resumed run may change: they decide where output goes and how work is spread, never the
# numbers a step computes (gradient accumulation changes only how a global batch is split).
RESUME_FREE_FIELDS = frozenset(
    {
        "out_dir",
        "checkpoint_every",
        "keep_checkpoints",
        "keep_last",
        "log_every",
        "tensorboard",
        "progress",
        "resume",
        "stop_after",
        "num_workers",
        "device",
        "threads",
        "grad_accum",
    }
)


@dataclass(frozen=True)
class TrainSettings:
    """How to optimize: the loop's schedule, precision, checkpoints, logging and resume."""

    steps: int = 1000  # optimizer steps; the cosine schedule ends here
    batch_size: int = 8  # images per optimizer step over all processes and accumulation steps
    grad_accum: int = 1  # micro-batches per optimizer step (memory, not math: same global batch)
    lr: float = 1e-4  # peak learning rate, reached at the end of warm-up
    min_lr_ratio: float = 0.01  # the cosine decays to lr * min_lr_ratio
    warmup_steps: Optional[int] = None  # linear warm-up steps (default: steps // 20, at least 1)
    weight_decay: float = 0.05  # AdamW; never applied to norms, biases, LayerScale or positions
    betas: Tuple[float, float] = flag(
        (0.9, 0.999), "AdamW moment decay rates", nargs=2, metavar=("B1", "B2")
    )
    clip_grad: Optional[float] = 1.0  # max global gradient L2 norm; None or 0 disables clipping
    amp: str = flag("auto", choices=AMP_MODES)  # "auto": bf16 autocast on CUDA, fp32 on CPU
    seed: int = 0  # data order, prompts, keep ratios and fresh weights all derive from it
    device: str = "auto"  # auto (CUDA when available), cpu, cuda, cuda:N
    num_workers: int = 2  # DataLoader worker processes per rank
    threads: Optional[int] = None  # torch CPU threads per process; None: torch's default
    out_dir: str = "outputs/train"  # checkpoints, metrics.jsonl, loss plot, final model
    checkpoint_every: int = 500  # steps between atomic checkpoints (and one at the end)
    keep_checkpoints: bool = False  # keep step_<N>.pth next to last.pth instead of only last
    keep_last: int = flag(
        10, "with keep_checkpoints, only the newest N step_<N>.pth stay (0: all)", metavar="N"
    )
    log_every: int = 10  # steps between JSONL metric lines (averaged over the interval)
    tensorboard: bool = False  # also write TensorBoard events (needs the tensorboard package)
    progress: bool = True  # progress bar with loss, lr, images/s and ETA on rank 0
    resume: Optional[str] = None  # a training checkpoint, or "auto": out_dir's last.pth if any
    stop_after: Optional[int] = None  # stop (with a checkpoint) after this many steps of this run
    # The final model is an exponential moving average of the trainable weights with this decay
    # (0: off, the last weights); training checkpoints keep the raw weights and the average.
    ema_decay: float = flag(
        0.0, "the final model is a moving average of the weights with this decay (0: off)"
    )

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError(
                f"batch_size and grad_accum must be >= 1, got {self.batch_size}, {self.grad_accum}"
            )
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if self.clip_grad is not None and self.clip_grad < 0:
            raise ValueError(f"clip_grad must be >= 0 (0 disables), got {self.clip_grad}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.checkpoint_every < 1 or self.log_every < 1:
            raise ValueError(
                "checkpoint_every and log_every must be >= 1, got "
                f"{self.checkpoint_every}, {self.log_every}"
            )
        if self.keep_last < 0:
            raise ValueError(
                f"keep_last must be >= 0 (0 keeps every checkpoint), got {self.keep_last}"
            )
        if self.stop_after is not None and self.stop_after < 1:
            raise ValueError(f"stop_after must be >= 1, got {self.stop_after}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) (0: off), got {self.ema_decay}")
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))

    @property
    def effective_warmup(self) -> int:
        """Warm-up steps: the given number, or 5% of ``steps`` (at least 1)."""
        if self.warmup_steps is not None:
            return min(self.warmup_steps, self.steps)
        return max(1, self.steps // 20)

    def replace(self, **changes: Any) -> "TrainSettings":
        """A copy with ``changes`` (only the flags a user gave)."""
        return dataclasses.replace(self, **changes)


def settings_to_dict(settings: Any) -> Dict[str, Any]:
    """A dataclass (nested ones too) as plain JSON-ready values: tuples become lists."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        return value

    return plain(settings)


def keep_ratio_for_step(seed: int, step: int, ratios: Tuple[float, ...]) -> float:
    """The keep ratio of ``step``: drawn from ``ratios``, the same on every rank and resume."""
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(step), 0x6B72])
    return float(ratios[int(rng.integers(len(ratios)))])


# Fields added after training checkpoints were first written, with the value that does what the
# code did before they existed. A resume compares fingerprints without them at that value, so a
# checkpoint written before them still resumes (and one made with them on does not resume without).
LATER_FIELDS: Dict[str, Any] = {"ema_decay": 0.0, "soft_targets": False}


def without_later_defaults(fingerprint: Dict[str, Any]) -> Dict[str, Any]:
    """A ``fingerprint_settings`` result without the :data:`LATER_FIELDS` at their old value."""
    return {
        part: {k: v for k, v in values.items() if not (k in LATER_FIELDS and v == LATER_FIELDS[k])}
        for part, values in fingerprint.items()
    }


def fingerprint_settings(settings: Any, free: frozenset) -> Dict[str, Any]:
    """The task settings (without ``free`` fields) and the train settings (without the loop's free
    fields): what must be equal for a resume to continue the same computation."""
    task = {k: v for k, v in settings_to_dict(settings).items() if k not in free}
    train = {
        k: v for k, v in settings_to_dict(settings.train).items() if k not in RESUME_FREE_FIELDS
    }
    return {"task": task, "train": train}
