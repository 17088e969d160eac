"""What a training run reports: JSONL metrics, optional TensorBoard and a loss plot.

Only rank 0 writes. ``metrics.jsonl`` gets one line every ``log_every`` steps with the interval's
mean loss, its parts, the learning rate and the throughput. A resumed run first drops the lines of
steps after its checkpoint, so the file reads as one uninterrupted run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from ..fileio import atomic_open

__all__ = ["MetricsLog", "RunningMeans", "plot_losses", "read_metrics"]


@dataclass
class RunningMeans:
    """One rank's sums behind the next metrics line; saved in training checkpoints, so the first
    line after a resume averages the same steps as an uninterrupted run's.

    Attributes:
      sums: per metric, the sum of this rank's step values since the last line.
      steps: steps since the last line.
      skipped: images this rank skipped since the run began (over every resume).
    """

    sums: Dict[str, float] = field(default_factory=dict)
    steps: int = 0
    skipped: int = 0

    def add(self, values: Mapping[str, float]) -> None:
        """One step's values."""
        for name, value in values.items():
            self.sums[name] = self.sums.get(name, 0.0) + value
        self.steps += 1

    def reset(self) -> None:
        """A line was written: the next one starts from here."""
        self.sums, self.steps = {}, 0

    def state(self) -> Dict[str, Any]:
        """Plain values for a checkpoint."""
        return {"sums": dict(self.sums), "steps": self.steps, "skipped": self.skipped}

    @classmethod
    def restore(cls, saved: Sequence[Mapping[str, Any]], rank: int, world: int) -> "RunningMeans":
        """This rank's means from every rank's :meth:`state` in a checkpoint.

        With the same number of processes each rank takes its own. Otherwise rank 0 takes the
        mean over the saved ranks, scaled so that the sum over the new ranks (what a line divides
        by ``steps x world``) stays the same, and the other ranks start empty.
        """
        if not saved:
            return cls()
        if len(saved) == world:
            own = saved[rank]
            sums = {str(k): float(v) for k, v in own["sums"].items()}
            return cls(sums, int(own["steps"]), int(own["skipped"]))
        steps = int(saved[0]["steps"])
        if rank != 0:
            return cls({str(k): 0.0 for k in saved[0]["sums"]}, steps, 0)
        scale = world / len(saved)
        sums: Dict[str, float] = {}
        for part in saved:
            for k, v in part["sums"].items():
                sums[str(k)] = sums.get(str(k), 0.0) + float(v) * scale
        return cls(sums, steps, sum(int(part["skipped"]) for part in saved))


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
        with atomic_open(self.path, "w") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")

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
    try:
        with atomic_open(out_path, "wb") as f:
            fig.savefig(f, format="png")
    finally:
        plt.close(fig)
    return out_path
