"""What one kind of training (distillation, fine-tuning) gives the shared loop, and what it gets
back: :class:`TrainTask` and :class:`TrainResult` (``train.loop.run_training``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from torch import nn

from ..config import SamViTConfig
from .data import TrainImages

__all__ = ["TrainResult", "TrainTask"]


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
