"""What a training run reports: JSONL metrics, optional TensorBoard, a progress bar, a loss plot.

Only rank 0 writes. ``metrics.jsonl`` gets one line every ``log_every`` steps with the interval's
mean loss, its parts, the learning rate and the throughput. A resumed run first drops the lines of
steps after its checkpoint, so the file reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, TextIO

__all__ = ["MetricsLog", "TrainProgress", "plot_losses", "read_metrics", "format_duration"]


def format_duration(seconds: float) -> str:
    """``h:mm:ss`` or ``mm:ss``; ``?`` when unknown."""
    if not math.isfinite(seconds):
        return "?"
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def read_metrics(path: Path) -> List[Dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file (a torn last line, from a crash, is ignored)."""
    records = []
    if not path.is_file():
        return records
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


class MetricsLog:
    """JSONL metrics on rank 0, and TensorBoard events when asked for."""

    def __init__(
        self, out_dir: Path, enabled: bool, tensorboard: bool, resume_step: Optional[int]
    ) -> None:
        """
        Arguments:
          out_dir: the run folder; metrics go to ``metrics.jsonl`` and ``tensorboard/``.
          enabled: False on ranks other than 0 (nothing is written).
          tensorboard: also write TensorBoard events.
          resume_step: the step a resumed run starts from (lines after it are dropped), or None
            for a new run (an old file is replaced).

        Raises:
          ImportError: ``tensorboard`` asked for but the package is not installed, with the fix.
        """
        self.path = out_dir / "metrics.jsonl"
        self.enabled = enabled
        self.writer: Any = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ImportError(
                    "TensorBoard logging (--tensorboard) needs the tensorboard package: "
                    f"pip install tensorboard ({e})"
                ) from None
            if enabled:
                self.writer = SummaryWriter(log_dir=str(out_dir / "tensorboard"))
        if not enabled:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        kept = []
        if resume_step is not None:
            kept = [r for r in read_metrics(self.path) if int(r.get("step", 0)) <= resume_step]
        self._rewrite(kept)

    def _rewrite(self, records: List[Dict[str, Any]]) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".metrics.", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                for r in records:
                    f.write(json.dumps(r) + "\n")
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def write(self, record: Dict[str, Any]) -> None:
        """Append one record (``step`` plus numbers); flushed at once so a crash keeps it."""
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            step = int(record["step"])
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class TrainProgress:
    """Steps done, loss, lr, images/s and ETA: a tqdm bar, or a line every few seconds."""

    def __init__(
        self,
        total: int,
        start: int,
        desc: str,
        enabled: bool,
        stream: Optional[TextIO] = None,
        every_s: float = 10.0,
    ) -> None:
        self.total = total
        self.done = start
        self.first = start
        self.desc = desc
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.every_s = every_s
        self.started = time.perf_counter()
        self._last = self.started
        self._bar: Any = None
        self.postfix: Dict[str, str] = {}
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                self._bar = None
            else:
                self._bar = tqdm(
                    total=total,
                    initial=start,
                    desc=desc,
                    unit="step",
                    file=self.stream,
                    dynamic_ncols=True,
                )

    def update(self, loss: float, lr: float, images_per_s: float) -> None:
        """One step done."""
        self.done += 1
        if not self.enabled:
            return
        self.postfix = {"loss": f"{loss:.4g}", "lr": f"{lr:.3g}", "img/s": f"{images_per_s:.1f}"}
        if self._bar is not None:
            self._bar.set_postfix(self.postfix, refresh=False)
            self._bar.update(1)
            return
        now = time.perf_counter()
        if now - self._last >= self.every_s or self.done >= self.total:
            self._last = now
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    def line(self) -> str:
        """``desc: step done/total, loss, lr, img/s, elapsed, ETA``."""
        elapsed = time.perf_counter() - self.started
        steps = self.done - self.first
        rate = steps / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        extra = ", ".join(f"{k} {v}" for k, v in self.postfix.items())
        return (
            f"{self.desc}: step {self.done}/{self.total}, {extra}, elapsed "
            f"{format_duration(elapsed)}, ETA {format_duration(eta)}"
        )

    def write(self, message: str) -> None:
        """A message that does not break the bar."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(message, file=self.stream)
        else:
            self.stream.write(message + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def plot_losses(metrics_path: Path, out_path: Path, title: str) -> Optional[Path]:
    """PNG of the loss (and its parts) against the step, with the learning rate on a second axis.

    Returns:
      The PNG path, or None when there is nothing to plot. Raises ImportError without matplotlib.
    """
    records = read_metrics(metrics_path)
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in records]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    keys = [k for k in records[-1] if k == "loss" or k.startswith("loss_")]
    for key in keys:
        ys = [r.get(key) for r in records]
        pts = [(s, y) for s, y in zip(steps, ys) if isinstance(y, (int, float)) and y > 0]
        if pts:
            ax.plot(*zip(*pts), label=key, lw=2.0 if key == "loss" else 1.0)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (log scale)")
    ax.grid(True, alpha=0.3)
    lrs = [r.get("lr") for r in records]
    if all(isinstance(v, (int, float)) for v in lrs):
        ax2 = ax.twinx()
        ax2.plot(steps, lrs, color="grey", ls="--", lw=1.0, label="lr")
        ax2.set_ylabel("learning rate")
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path)
    plt.close(fig)
    return out_path
