"""Training checkpoints: everything an exact resume needs, written atomically, checked on load.

A training checkpoint is also a model checkpoint: ``{"model": state_dict, "config": ...,
"teacher": ...}`` plus a ``"train"`` entry with the optimizer, the scheduler, the step, the data
position and the RNG states. ``sam_model_registry[name](checkpoint="last.pth")`` therefore loads
the model straight from a run in progress. Every value is a tensor or a plain container, so the
file loads with ``weights_only=True``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import numpy as np
import torch
from torch import nn

from ..checkpoint import CheckpointError, atomic_save, checkpoint_payload, read_checkpoint
from ..config import SamViTConfig
from .settings import without_later_defaults

__all__ = [
    "TRAIN_FORMAT",
    "TRAIN_VERSION",
    "capture_rng",
    "restore_rng",
    "save_training_checkpoint",
    "load_training_checkpoint",
    "check_resume_compatible",
    "describe_differences",
]

TRAIN_FORMAT = "biglittle-sam-train"
TRAIN_VERSION = 1
PathLike = Any


def capture_rng() -> Dict[str, Any]:
    """The torch (CPU and every CUDA device), numpy and Python RNG states, as plain values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
    version, internal, gauss_next = random.getstate()
    state: Dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),  # (624,) MT19937 words
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": [int(version), [int(v) for v in internal], gauss_next],
        "cuda": [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    """Put back what :func:`capture_rng` returned."""
    torch.set_rng_state(state["torch"].to(torch.uint8).cpu())
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["kind"],
            np_state["keys"].numpy().astype(np.uint32),
            int(np_state["pos"]),
            int(np_state["has_gauss"]),
            float(np_state["cached_gaussian"]),
        )
    )
    version, internal, gauss_next = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal), gauss_next))
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.to(torch.uint8).cpu() for s in cuda])


def save_training_checkpoint(
    path: PathLike,
    model: nn.Module,
    config: SamViTConfig,
    teacher: Optional[str],
    train: Dict[str, Any],
    **extra: Any,
) -> Path:
    """Write a training checkpoint atomically.

    Arguments:
      path: the file to write (its folder is created).
      model: the ``Sam`` being trained (unwrapped from DDP); its full state dict is saved.
      config: the model's config, so the checkpoint rebuilds its own model.
      teacher: the teacher tag recorded in model checkpoints.
      train: the loop's state: ``task``, ``fingerprint``, ``step``, ``samples_seen``,
        ``optimizer``, ``scheduler``, ``rng`` (one entry per rank) and what else the loop records.
      extra: more plain metadata (``teacher_sha256``, ...).
    """
    payload = checkpoint_payload(
        model,
        config,
        teacher,
        train={"format": TRAIN_FORMAT, "version": TRAIN_VERSION, **train},
        **extra,
    )
    return atomic_save(payload, path)


_TRAIN_KEYS = ("task", "fingerprint", "step", "samples_seen", "optimizer", "scheduler", "rng")


def load_training_checkpoint(path: PathLike) -> Dict[str, Any]:
    """Read a training checkpoint (``weights_only=True``) and check that it is one.

    Raises:
      FileNotFoundError: no such file.
      CheckpointError: unreadable, or a model checkpoint without training state (which can start
        a new run with an init option, but cannot be resumed).
    """
    obj = read_checkpoint(path)
    train = obj.get("train") if isinstance(obj, dict) else None
    if not isinstance(train, dict) or train.get("format") != TRAIN_FORMAT:
        raise CheckpointError(
            f"{path}: not a training checkpoint (no 'train' state with format '{TRAIN_FORMAT}'); "
            "--resume takes the last.pth or step_<N>.pth a training run wrote. To start a new "
            "run from a model checkpoint, use the tool's init option instead"
        )
    if train.get("version") != TRAIN_VERSION:
        raise CheckpointError(
            f"{path}: training checkpoint version {train.get('version')} is not supported "
            f"(expected {TRAIN_VERSION})"
        )
    missing = [k for k in _TRAIN_KEYS if k not in train]
    if missing or not isinstance(obj.get("model"), dict):
        raise CheckpointError(
            f"{path}: training checkpoint is incomplete: missing {missing or ['model']}"
        )
    return obj


def describe_differences(saved: Any, current: Any, prefix: str = "") -> List[str]:
    """Every leaf where two nested dicts / lists differ, as ``"a.b: checkpoint X, now Y"``."""
    if isinstance(saved, Mapping) and isinstance(current, Mapping):
        out: List[str] = []
        for key in sorted(set(saved) | set(current), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in saved:
                out.append(f"{name}: not in the checkpoint, now {current[key]!r}")
            elif key not in current:
                out.append(f"{name}: checkpoint {saved[key]!r}, now absent")
            else:
                out.extend(describe_differences(saved[key], current[key], name))
        return out
    if isinstance(saved, (list, tuple)) and isinstance(current, (list, tuple)):
        if len(saved) == len(current):
            out = []
            for i, (a, b) in enumerate(zip(saved, current)):
                out.extend(describe_differences(a, b, f"{prefix}[{i}]"))
            return out
    if _same(saved, current):
        return []
    return [f"{prefix or 'value'}: checkpoint {saved!r}, now {current!r}"]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        try:
            return float(a) == float(b)
        except (TypeError, ValueError):
            return False
    return bool(a == b)


def check_resume_compatible(
    payload: Mapping[str, Any], path: PathLike, task: str, fingerprint: Mapping[str, Any]
) -> None:
    """Raise CheckpointError, listing every difference, unless ``payload`` was made by a run of
    the same task with the same fingerprint (model config, settings that change the numbers,
    teacher, data size)."""
    train = payload["train"]
    if train.get("task") != task:
        raise CheckpointError(
            f"{path}: is a '{train.get('task')}' training checkpoint; it cannot resume a "
            f"'{task}' run"
        )
    saved, current = dict(train.get("fingerprint", {})), dict(fingerprint)
    for fp in (saved, current):
        if isinstance(fp.get("settings"), dict):
            fp["settings"] = without_later_defaults(fp["settings"])
    diffs = describe_differences(saved, current)
    if diffs:
        shown = "; ".join(diffs[:8]) + (f"; ... ({len(diffs)} in all)" if len(diffs) > 8 else "")
        raise CheckpointError(
            f"{path}: cannot resume: the checkpoint was made with a different configuration "
            f"({shown}). Resume with the settings of that run, or start a new run in another "
            "output folder"
        )
