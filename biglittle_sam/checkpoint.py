"""Reading and writing checkpoints safely.

Every load goes through :func:`read_checkpoint`, which calls ``torch.load`` with
``map_location="cpu", weights_only=True``, so a file that holds pickled code is refused and nothing
in it runs. Every save goes through :func:`atomic_save`: written to a temporary file in the same
folder, flushed, then renamed, so an interrupted save never leaves a half-written checkpoint under
the real name.
"""

from __future__ import annotations

import datetime
import os
import pickle
import re
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from .config import SamViTConfig, config_to_dict
from .fileio import atomic_open

__all__ = [
    "CheckpointError",
    "read_checkpoint",
    "split_checkpoint",
    "atomic_save",
    "save_model_checkpoint",
    "load_state_dict_strict",
    "describe_state_dict",
    "guess_model_name",
    "FORMAT_NAME",
    "FORMAT_VERSION",
]

PathLike = Union[str, os.PathLike]
StateDict = Dict[str, Tensor]
FORMAT_NAME = "biglittle-sam"
FORMAT_VERSION = 1

# (embed_dim, depth) of the image encoders in the registry, to name what a state dict looks like.
_KNOWN_ENCODERS = {
    (768, 12): "vit_b",
    (1024, 24): "vit_l",
    (1280, 32): "vit_h",
    (64, 4): "vit_tiny",
}
_PRETTY = {"vit_b": "SAM ViT-B", "vit_l": "SAM ViT-L", "vit_h": "SAM ViT-H", "vit_tiny": "tiny SAM"}


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: unreadable, unsafe, or for another model."""


def read_checkpoint(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> Any:
    """Load a checkpoint file with ``weights_only=True``.

    Raises:
      FileNotFoundError: the file does not exist.
      CheckpointError: the file is truncated, not a PyTorch checkpoint, or holds pickled objects
        other than tensors and plain containers (which are refused without being run).
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    if p.is_dir():
        raise CheckpointError(f"{p}: is a directory, expected a .pth checkpoint file")
    if p.stat().st_size == 0:
        raise CheckpointError(f"{p}: the file is empty, expected a PyTorch checkpoint")
    try:
        return torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{p}: refused to load: the file holds pickled Python objects that are not plain "
            "tensors "
            f"and containers, and only weights are loaded (weights_only=True). Detail: {first}"
        ) from None
    except Exception as e:  # torch raises many types here (RuntimeError, KeyError, EOFError, ...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{p}: not a readable PyTorch checkpoint (truncated or corrupted?): {first}"
        ) from None


def split_checkpoint(obj: Any, path: PathLike = "<checkpoint>") -> Tuple[StateDict, Dict[str, Any]]:
    """Separate a loaded checkpoint into its state dict and its metadata.

    Accepted layouts: a flat state dict (the official SAM layout); ``{"model": state_dict, ...}``
    (this project's format, whose other keys are metadata such as ``config`` and ``teacher``); and
    ``{"state_dict": state_dict}``. A ``module.`` prefix left by DistributedDataParallel is removed.
    """
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{path}: expected a dict of tensors (a state dict) or a dict with a 'model' "
            "state dict, "
            f"got {type(obj).__name__}"
        )
    meta: Dict[str, Any] = {}
    if "model" in obj and isinstance(obj["model"], Mapping):
        state = obj["model"]
        meta = {k: v for k, v in obj.items() if k != "model"}
    elif "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        state = obj["state_dict"]
        meta = {k: v for k, v in obj.items() if k != "state_dict"}
    else:
        state = obj
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(
            f"{path}: entries {bad[:5]} are not tensors; expected a state dict of tensors"
        )
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return dict(state), meta


def atomic_save(obj: Any, path: PathLike) -> Path:
    """``torch.save`` to a temporary file next to ``path``, fsync, then rename over ``path``."""
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)
    return Path(path)


def save_model_checkpoint(
    path: PathLike,
    model: nn.Module,
    config: SamViTConfig,
    teacher: Optional[str] = None,
    **extra: Any,
) -> Path:
    """Write ``{"model", "config", "teacher", "format", ...}`` atomically.

    ``extra`` must hold only plain values (str, numbers, lists, dicts), so the file stays loadable
    with ``weights_only=True``.
    """
    payload: Dict[str, Any] = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": config_to_dict(config),
        "teacher": teacher,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    payload.update(extra)
    return atomic_save(payload, path)


_BLOCK_RE = re.compile(r"(?:^|\.)blocks\.(\d+)\.")


def guess_model_name(state: Mapping[str, Tensor]) -> Optional[str]:
    """The registry name a state dict looks like (``vit_b``, ``bl_l``, ...), or None."""
    prefix = "image_encoder." if any(k.startswith("image_encoder.") for k in state) else ""
    w = state.get(prefix + "patch_embed.proj.weight")
    if w is None or w.dim() != 4:
        return None
    depth = 1 + max((int(m.group(1)) for k in state if (m := _BLOCK_RE.search(k))), default=-1)
    base = _KNOWN_ENCODERS.get((int(w.shape[0]), depth))
    if base is None:
        return None
    big_little = any(".little." in k for k in state)
    return "bl_" + base.split("_", 1)[1] if big_little else base


def describe_state_dict(state: Mapping[str, Tensor]) -> str:
    """A short human description: which model the state dict looks like."""
    prefix = "image_encoder." if any(k.startswith("image_encoder.") for k in state) else ""
    w = state.get(prefix + "patch_embed.proj.weight")
    if w is None:
        return "no image encoder found (no 'image_encoder.patch_embed.proj.weight')"
    depth = 1 + max((int(m.group(1)) for k in state if (m := _BLOCK_RE.search(k))), default=-1)
    big_little = any(".little." in k for k in state)
    name = guess_model_name(state)
    kind = "big.LITTLE" if big_little else "plain SAM ViT"
    sizes = f"embed_dim {int(w.shape[0])}, {depth} blocks"
    what = f"{name} ({_PRETTY.get(name, kind)}, {sizes})" if name else f"a {kind} encoder ({sizes})"
    if name and big_little:
        what = f"{name} (big.LITTLE, {sizes})"
    if not prefix:
        what += ", image encoder only"
    return what


def _key_diff(
    expected: Mapping[str, Tensor], given: Mapping[str, Tensor]
) -> Tuple[List[str], List[str], List[str]]:
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    shape = sorted(
        f"{k}: checkpoint {tuple(given[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(given)
        if tuple(expected[k].shape) != tuple(given[k].shape)
    )
    return missing, unexpected, shape


def _short(items: Iterable[str], n: int = 6) -> str:
    items = list(items)
    head = ", ".join(items[:n])
    return head + (f", ... ({len(items)} in all)" if len(items) > n else "")


def mismatch_message(
    path: PathLike,
    model_name: str,
    expected: Mapping[str, Tensor],
    given: Mapping[str, Tensor],
    allowed_missing: Tuple[str, ...] = (),
) -> Optional[str]:
    """None when ``given`` fits ``expected``; else a message naming file, look-alike and keys."""
    missing, unexpected, shape = _key_diff(expected, given)
    missing = [k for k in missing if not any(s in k for s in allowed_missing)]
    if not (missing or unexpected or shape):
        return None
    parts = [f"{path}: checkpoint does not fit model '{model_name}'"]
    parts.append(f"it looks like {describe_state_dict(given)}")
    if shape:
        parts.append(f"shape mismatches: {_short(shape, 4)}")
    if missing:
        parts.append(f"missing keys: {_short(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {_short(unexpected)}")
    return "; ".join(parts)


def load_state_dict_strict(
    model: nn.Module,
    state: Mapping[str, Tensor],
    path: PathLike,
    model_name: str,
    allowed_missing: Tuple[str, ...] = (),
) -> None:
    """Load ``state`` into ``model``; a missing, unexpected or misshaped key: CheckpointError.

    ``allowed_missing`` lists substrings of keys that may be absent (for example ``.little.`` and
    ``.router.`` when a big.LITTLE model inherits from a plain SAM checkpoint); those keep their
    initial values.
    """
    expected = model.state_dict()
    message = mismatch_message(path, model_name, expected, state, allowed_missing)
    if message:
        raise CheckpointError(message)
    model.load_state_dict(state, strict=not allowed_missing)
