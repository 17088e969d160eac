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

from .config import (
    BIGLITTLE_CONFIGS,
    BigLittleConfig,
    SamViTConfig,
    config_from_dict,
    config_to_dict,
)
from .fileio import atomic_open

__all__ = [
    "CheckpointError",
    "CheckpointNotFoundError",
    "read_checkpoint",
    "split_checkpoint",
    "atomic_save",
    "save_model_checkpoint",
    "checkpoint_payload",
    "checkpoint_config",
    "parameter_floor",
    "tensor_elements",
    "load_state_dict_strict",
    "describe_state_dict",
    "guess_model_name",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "layout_version",
]

PathLike = Union[str, os.PathLike]
StateDict = Dict[str, Tensor]
FORMAT_NAME = "biglittle-sam"
# The newest checkpoint layout this code reads. 1: every model before ``global_context``; 2: a
# model with a global-context module (``blocks.<i>.context.*`` keys, the config's global_context
# fields); 3: a training-free model with a learned correction (``little_correction``: E-blocks and
# copy gates, ``blocks.<i>.little.*`` and ``blocks.<i>.context.gate``). A file records the oldest
# version that describes it (layout_version), so a model without the module stays readable by code
# from before it.
FORMAT_VERSION = 3

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


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No file at the checkpoint path (a ``CheckpointError`` and a ``FileNotFoundError``)."""


# Lines of torch's weights_only refusal that are advice, not facts about the file: its suggestion
# to re-run with ``weights_only=False`` (which would run the file's code) is never passed on.
_TORCH_ADVICE = (
    "weights only load failed",
    "weights_only",
    "check the documentation",
    "please file an issue",
    "add_safe_globals",
    "safe_globals",
    "trusted source",
)
_BLOCKED_GLOBAL = re.compile(r"GLOBAL\s+([A-Za-z_][\w.]*)")


def _torch_detail(error: BaseException) -> str:
    """The first line of a torch error that describes the file, with torch's advice removed."""
    for line in str(error).splitlines():
        text = line.strip()
        if text.lower().startswith("weightsunpickler error:"):
            text = text.split(":", 1)[1].strip()
        if text and not any(a in text.lower() for a in _TORCH_ADVICE):
            return text
    return type(error).__name__


def _file_kind(path: Path) -> str:
    """What the file's first bytes say it is: a zip archive, a pickle, or neither."""
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(b"PK\x03\x04"):  # a zip archive's first local header, even truncated
        return "zip"
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return "pickle"
    return "bytes " + " ".join(f"{b:02x}" for b in head)


def _refusal(path: Path, error: pickle.UnpicklingError) -> CheckpointError:
    """The message for a file ``weights_only=True`` would not load."""
    blocked = _BLOCKED_GLOBAL.search(str(error))
    if blocked:
        return CheckpointError(
            f"{path}: refused to load: the file references the Python global "
            f"'{blocked.group(1)}', which is not tensor data. Only tensors and plain containers "
            "are loaded from checkpoints, and nothing in the file was run"
        )
    kind = _file_kind(path)
    if kind == "pickle":
        return CheckpointError(
            f"{path}: not a readable PyTorch checkpoint: a Python pickle in a form torch.save "
            f"does not write ({_torch_detail(error)}); nothing in the file was run"
        )
    if kind == "zip":
        return CheckpointError(
            f"{path}: not a readable PyTorch checkpoint: a zip archive whose data.pkl cannot be "
            f"read ({_torch_detail(error)}); nothing in the file was run"
        )
    return _not_torch(path, kind)


def _not_torch(path: Path, kind: str) -> CheckpointError:
    return CheckpointError(
        f"{path}: not a readable PyTorch checkpoint: neither a zip archive (torch.save) nor a "
        f"pickle (it starts with {kind})"
    )


def read_checkpoint(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> Any:
    """Load a checkpoint file with ``weights_only=True``.

    Raises:
      CheckpointNotFoundError: nothing exists at ``path`` (also a ``FileNotFoundError``).
      CheckpointError: ``path`` is a directory; the file is empty, truncated or not a PyTorch
        checkpoint; or it references Python globals other than tensors and plain containers
        (refused without being run; the message names the global).
    """
    p = Path(path)
    if p.is_dir():
        raise CheckpointError(f"{p}: is a directory, expected a .pth checkpoint file")
    if not p.exists():
        raise CheckpointNotFoundError(f"{p}: no such checkpoint file (not found)")
    if p.stat().st_size == 0:
        raise CheckpointError(f"{p}: the file is empty, expected a PyTorch checkpoint")
    try:
        return torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise _refusal(p, e) from None
    except Exception as e:  # torch raises many types here (RuntimeError, KeyError, EOFError, ...)
        kind = _file_kind(p)
        if kind not in ("zip", "pickle"):
            raise _not_torch(p, kind) from None
        raise CheckpointError(
            f"{p}: not a readable PyTorch checkpoint (truncated or corrupted?): {_torch_detail(e)}"
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


def layout_version(config: SamViTConfig) -> int:
    """The checkpoint layout version a model of ``config`` needs (see FORMAT_VERSION)."""
    if getattr(config, "little_correction", False):
        return 3
    return 2 if getattr(config, "global_context", "none") != "none" else 1


def check_version(meta: Mapping[str, Any], path: PathLike) -> None:
    """CheckpointError when a checkpoint's layout ``version`` is newer than this code reads."""
    version = meta.get("version")
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint layout version {version} is newer than this code reads (version "
            f"{FORMAT_VERSION} at most); update biglittle_sam to load it"
        )


def checkpoint_payload(
    model: nn.Module,
    config: SamViTConfig,
    teacher: Optional[str] = None,
    **extra: Any,
) -> Dict[str, Any]:
    """The one layout of a model checkpoint: ``{"format", "version", "model", "config", "teacher",
    "created", ...extra}``.

    ``extra`` must hold only plain values (str, numbers, lists, dicts, tensors), so the file stays
    loadable with ``weights_only=True``. Training checkpoints add their ``"train"`` entry here.
    """
    payload: Dict[str, Any] = {
        "format": FORMAT_NAME,
        "version": layout_version(config),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": config_to_dict(config),
        "teacher": teacher,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    payload.update(extra)
    return payload


def save_model_checkpoint(
    path: PathLike,
    model: nn.Module,
    config: SamViTConfig,
    teacher: Optional[str] = None,
    **extra: Any,
) -> Path:
    """Write :func:`checkpoint_payload` atomically to ``path``."""
    return atomic_save(checkpoint_payload(model, config, teacher, **extra), path)


def tensor_elements(state: Mapping[str, Tensor]) -> int:
    """Elements the tensors of ``state`` really hold: each storage counted once.

    Views of one storage (which ``torch.save`` keeps shared) do not add up, so a small file cannot
    claim to hold more numbers than it does.
    """
    sizes: Dict[Tuple[str, int], int] = {}
    for t in state.values():
        storage = t.untyped_storage()
        key = (str(t.device), storage.data_ptr())
        sizes[key] = max(sizes.get(key, 0), storage.nbytes() // max(1, t.element_size()))
    return sum(sizes.values())


def _block_floor(width: int, heads: int, mlp_ratio: float, window: int, rel_pos: bool) -> int:
    """Weights of one ViT block at least: qkv 3C^2, proj C^2, MLP 2 C (ratio C), relative
    positions 2 (2w - 1) C / heads."""
    floor = 4 * width * width + 2 * width * int(width * mlp_ratio)
    if rel_pos:
        floor += 2 * (2 * window - 1) * (width // heads)
    return floor


def parameter_floor(config: SamViTConfig, encoder_only: bool = False) -> int:
    """A lower bound on the parameters of the model ``config`` builds, from the config alone.

    Only the large weight matrices are counted (norms, biases and small embeddings are not), so a
    file holding the model always holds at least this many numbers: a config asking for more than
    its file's tensors is refused before anything is allocated. ``encoder_only`` counts the image
    encoder alone (an encoder checkpoint).
    """
    c, o, g = config.embed_dim, config.out_chans, config.grid_size
    floor = c * config.in_chans * config.patch_size**2 + g * g * c  # patch embed, pos embed
    # No loop over the blocks: a hostile depth must not cost time either.
    n_global = len(set(config.global_attn_indexes))  # validated to lie in 0..depth-1
    heads, ratio, rel_pos = config.num_heads, config.mlp_ratio, config.use_rel_pos
    windowed = _block_floor(c, heads, ratio, config.window_size, rel_pos)
    global_ = _block_floor(c, heads, ratio, g, rel_pos)
    floor += (config.depth - n_global) * windowed + n_global * global_
    floor += c * o + 9 * o * o  # neck: conv 1x1, conv 3x3
    if isinstance(config, BigLittleConfig) and not config.training_free:  # E-blocks
        d = config.little_dim
        window = config.little_window_size or config.window_size
        little = _block_floor(d, config.little_heads, config.little_mlp_ratio, window, True)
        floor += config.depth * (little + 2 * c * d)  # E-block with its down / up projections
    if not encoder_only:
        half, hidden = o // 2, config.iou_head_hidden_dim
        # two-way transformer: self-attention 4 E^2, two cross-attentions at E / 2, MLP 2 E m
        layer = 4 * o * o + 2 * 4 * o * half + 2 * o * config.decoder_mlp_dim
        floor += config.decoder_depth * layer + 4 * o * half + o * hidden + hidden * hidden
        floor += config.mask_in_chans * o  # prompt encoder mask downscaling, last conv
    return floor


def checkpoint_config(
    meta: Mapping[str, Any],
    state: Mapping[str, Tensor],
    path: PathLike,
    extra_elements: int = 0,
) -> Optional[SamViTConfig]:
    """The config a checkpoint stores, validated before any model is built; None if it has none.

    The stored dict's types, sizes and divisibility are checked (``config_from_dict``), then its
    :func:`parameter_floor` against the numbers the file's tensors hold (plus ``extra_elements``
    from another file that will fill the rest, as when converting an encoder-only checkpoint).

    Raises:
      CheckpointError: naming the field that is wrong, or the budget the tensors do not cover.
    """
    check_version(meta, path)
    data = meta.get("config")
    if data is None:
        return None
    try:
        config = config_from_dict(data)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: its stored config is not valid: {e}") from None
    encoder_only = bool(state) and not any(k.startswith("image_encoder.") for k in state)
    needed = parameter_floor(config, encoder_only=encoder_only and not extra_elements)
    held = tensor_elements(state) + extra_elements
    if needed > held:
        raise CheckpointError(
            f"{path}: its stored config ('{config.name}': embed_dim {config.embed_dim}, depth "
            f"{config.depth}, little_dim {getattr(config, 'little_dim', '-')}, decoder_mlp_dim "
            f"{config.decoder_mlp_dim}) needs at least {needed:,} parameters, but the file's "
            f"tensors hold only {held:,} numbers; the config does not describe these weights"
        )
    return config


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
    if not any(".little." in k for k in state):
        return base
    # big.LITTLE: the registered configs over this teacher, told apart by their E-block shapes
    # (bl_b and bl_b_lite share every big block).
    down = state.get(prefix + "blocks.0.little.down.weight")  # (d, C)
    lin1 = state.get(prefix + "blocks.0.little.mlp.lin1.weight")  # (ratio * d, d)
    candidates = [c for c in BIGLITTLE_CONFIGS.values() if c.teacher == base]
    for config in candidates:
        if down is not None and int(down.shape[0]) != config.little_dim:
            continue
        if lin1 is not None and int(lin1.shape[0]) != int(
            config.little_dim * config.little_mlp_ratio
        ):
            continue
        return config.name
    return "bl_" + base.split("_", 1)[1]  # a custom E-block width over a known teacher


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
