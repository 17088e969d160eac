"""Which model a checkpoint file holds, found before anything is built.

:func:`resolve_checkpoint` reads a whole-SAM file (a project checkpoint, which stores its config,
or an official SAM file, whose size is recognized from its keys) and checks it against the model
asked for; :func:`check_inheritable` checks that a big.LITTLE model can inherit a SAM file's
weights. Both raise a ``CheckpointError`` that names the file, what it holds and what to do.
:func:`holds_plain_sam` tells an official SAM file from a big.LITTLE one (the registry's default
mode depends on it) and :func:`adopt_sam_sizes` shapes a training-free model like a custom-size
SAM file. ``build_sam`` builds and loads the models; this module only reads and checks.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping, Optional, Tuple

from .checkpoint import (
    CheckpointError,
    PathLike,
    StateDict,
    checkpoint_config,
    describe_state_dict,
    guess_model_name,
    read_checkpoint,
    split_checkpoint,
)
from .config import (
    BIGLITTLE_CONFIGS,
    SAM_CONFIGS,
    BigLittleConfig,
    SamViTConfig,
    biglittle_config_for,
    get_config,
)
from .model_spec import MODEL_NAMES

__all__ = [
    "read_sam_checkpoint",
    "resolve_checkpoint",
    "resolve_loaded",
    "is_official_sam_checkpoint",
    "holds_plain_sam",
    "adopt_sam_sizes",
    "training_free_checkpoint_error",
    "WeightFiles",
    "read_weight_files",
    "check_inheritable",
    "distilled_checkpoint_error",
    "canonical_name",
    "teacher_tag",
]


def _check_sam_flat(state: StateDict, path: PathLike) -> None:
    """Refuse a state dict that is not a whole SAM (an encoder alone, say)."""
    if not any(k.startswith("image_encoder.") for k in state):
        raise CheckpointError(
            f"{path}: not a whole-SAM checkpoint (no 'image_encoder.' keys); it looks like "
            f"{describe_state_dict(state)}. An encoder-only file must first be merged with SAM's "
            "prompt encoder and mask decoder: biglittle-sam-convert"
        )


def read_sam_checkpoint(path: PathLike) -> Tuple[StateDict, Dict[str, Any]]:
    """A whole-SAM checkpoint's state dict and metadata (``weights_only=True``).

    Raises:
      CheckpointNotFoundError: no file at ``path``.
      CheckpointError: unreadable or unsafe (see ``read_checkpoint``), or not a whole SAM (an
        encoder-only file, which ``biglittle-sam-convert`` merges first).
    """
    state, meta = split_checkpoint(read_checkpoint(path), path)
    _check_sam_flat(state, path)
    return state, meta


@dataclasses.dataclass
class WeightFiles:
    """The files a big.LITTLE build reads, each read once, and the mode they ask for."""

    checkpoint: Optional[PathLike] = None  # a big.LITTLE checkpoint, loaded strictly
    state: Optional[StateDict] = None
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    sam_checkpoint: Optional[PathLike] = None  # a plain SAM file to inherit from
    sam_state: Optional[StateDict] = None
    sam_meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    training_free: Optional[bool] = None  # None: the checkpoint's mode (the config's default)


def read_weight_files(
    checkpoint: Optional[PathLike],
    sam_checkpoint: Optional[PathLike],
    training_free: Optional[bool],
) -> WeightFiles:
    """Read a big.LITTLE build's files, each once, and apply the registry's rule for the mode.

    With ``training_free`` None, a model whose only weights are a plain SAM file
    (``sam_checkpoint=``, or ``checkpoint=`` naming one) is training-free; with anything else (a
    big.LITTLE checkpoint, no file) the mode is the checkpoint's or the config's (learned). A plain
    SAM file given as ``checkpoint=`` is inherited from unless ``training_free`` is False (then
    ``resolve_loaded`` says to pass it as ``sam_checkpoint=``).

    Raises:
      CheckpointNotFoundError, CheckpointError: a file is missing or unreadable.
    """
    weights = WeightFiles(training_free=training_free)
    if checkpoint is not None:
        state, meta = read_sam_checkpoint(checkpoint)
        if sam_checkpoint is None and training_free is not False and holds_plain_sam(state, meta):
            checkpoint, sam_checkpoint = None, checkpoint
            weights.sam_state, weights.sam_meta = state, meta
        else:
            weights.state, weights.meta = state, meta
    if sam_checkpoint is not None and weights.sam_state is None:
        weights.sam_state, weights.sam_meta = read_sam_checkpoint(sam_checkpoint)
    weights.checkpoint, weights.sam_checkpoint = checkpoint, sam_checkpoint
    if training_free is None and checkpoint is None and weights.sam_state is not None:
        weights.training_free = holds_plain_sam(weights.sam_state, weights.sam_meta) or None
    return weights


def canonical_name(name: Optional[str]) -> Optional[str]:
    """``default`` is SAM ViT-H, as in segment_anything."""
    return "vit_h" if name == "default" else name


def _pretty(name: str) -> str:
    """A registered model with its size, for messages: ``vit_b (768 wide, 12 blocks)``."""
    config = get_config(name)
    return f"{name} ({config.embed_dim} wide, {config.depth} blocks)"


def _official_file_error(path: PathLike, name: str, looks_like: str) -> CheckpointError:
    """An official SAM file given as ``checkpoint=`` to a big.LITTLE model: say what to do."""
    teacher = BIGLITTLE_CONFIGS[name].teacher
    if looks_like == teacher:
        return CheckpointError(
            f"{path}: is an official SAM checkpoint ({_pretty(looks_like)}), not a big.LITTLE "
            f"one. sam_model_registry['{name}'](checkpoint=...) runs it in the training-free mode "
            f"(SAM's weights alone, nothing to train); to build {name} from it with fresh "
            "E-blocks and routers (not distilled: what distillation starts from), pass it as "
            "sam_checkpoint=... with training_free=False"
        )
    fits = [n for n, c in BIGLITTLE_CONFIGS.items() if c.teacher == looks_like]
    other = f", or build {fits[0]} from this file with sam_checkpoint=..." if fits else ""
    return CheckpointError(
        f"{path}: is an official SAM checkpoint of another size: {_pretty(looks_like)}; {name} "
        f"inherits from {_pretty(teacher)}. Give a {teacher} checkpoint{other}"
    )


def resolve_checkpoint(
    path: PathLike, name: Optional[str] = None, custom_sizes: bool = False
) -> Tuple[SamViTConfig, StateDict, Dict[str, Any]]:
    """The config of the model in a checkpoint, with its state dict and metadata.

    A checkpoint written by this project stores its config, validated here before anything is
    built (``checkpoint_config``). An official SAM file does not: its size is taken from ``name``
    or recognized from its keys (``vit_b``, ``vit_l``, ``vit_h``). A ``name`` that disagrees with
    the file is an error naming both; an official SAM file named as a big.LITTLE model is an error
    telling to pass it as ``sam_checkpoint=`` (``bl_*`` checkpoints are loaded strictly, and a
    model inheriting from SAM is not distilled). With ``custom_sizes`` a stored plain SAM config
    of any name is accepted for ``name`` (``vit_tiny`` builds custom sizes).

    Raises:
      CheckpointError: unreadable, not a whole SAM, a bad stored config, of another model than
        ``name``, or of unknown size with no ``name`` given.
    """
    state, meta = read_sam_checkpoint(path)
    return resolve_loaded(state, meta, path, name, custom_sizes), state, meta


def resolve_loaded(
    state: StateDict,
    meta: Mapping[str, Any],
    path: PathLike,
    name: Optional[str] = None,
    custom_sizes: bool = False,
) -> SamViTConfig:
    """:func:`resolve_checkpoint` for a file already read (``read_sam_checkpoint``): its config."""
    wanted = canonical_name(name)
    config = checkpoint_config(meta, state, path)
    looks_like = guess_model_name(state)
    if config is None:
        if wanted in BIGLITTLE_CONFIGS and looks_like in SAM_CONFIGS:
            raise _official_file_error(path, wanted, looks_like)
        guessed = wanted or looks_like
        if guessed is None or guessed not in SAM_CONFIGS and guessed not in BIGLITTLE_CONFIGS:
            raise CheckpointError(
                f"{path}: cannot tell which model this is (no stored config, and it looks like "
                f"{describe_state_dict(state)}); name it: one of {sorted(MODEL_NAMES)}"
            )
        config = get_config(guessed)
    custom = custom_sizes and not isinstance(config, BigLittleConfig)
    if wanted is not None and wanted != config.name and not custom:
        raise CheckpointError(
            f"{path}: holds a '{config.name}' model, not '{name}'; build it as '{config.name}' "
            f"(sam_model_registry['{config.name}'], --model {config.name})"
        )
    return config


def teacher_tag(meta: Mapping[str, Any]) -> Optional[str]:
    """The teacher tag a checkpoint's metadata records (``"vit_b:sam_vit_b_01ec64.pth"``), or
    None."""
    teacher = meta.get("teacher")
    return teacher if isinstance(teacher, str) else None


def is_official_sam_checkpoint(path: PathLike) -> bool:
    """Whether a file is a plain SAM checkpoint (official, or a plain ``vit_*`` of this project).

    Used where one argument may name either a big.LITTLE checkpoint or the SAM file to inherit
    from (``bl_b=sam_vit_b_01ec64.pth`` in a model spec).
    """
    return holds_plain_sam(*read_sam_checkpoint(path))


def holds_plain_sam(state: StateDict, meta: Mapping[str, Any]) -> bool:
    """:func:`is_official_sam_checkpoint` for a file already read (``read_sam_checkpoint``)."""
    config = meta.get("config")
    if isinstance(config, Mapping):
        return "little_dim" not in config
    looks_like = guess_model_name(state)
    if looks_like is not None:
        return not looks_like.startswith("bl_")
    return not any(".little." in k for k in state)


def adopt_sam_sizes(
    config: BigLittleConfig, meta: Mapping[str, Any], state: StateDict, path: PathLike
) -> BigLittleConfig:
    """``config`` shaped like the plain SAM a project checkpoint stores, if it is ``config``'s
    teacher at custom sizes (the proxy teacher: ``vit_tiny`` at 128 px), else ``config``.

    Every size field (image, patch, width, depth, windows, decoder...) is the stored config's; the
    big.LITTLE fields (mode, keep ratio, token score...) stay ``config``'s. Official files store
    no config: their size is the registry's, checked by :func:`check_inheritable`.
    """
    stored = checkpoint_config(meta, state, path)
    if stored is None or isinstance(stored, BigLittleConfig) or stored.name != config.teacher:
        return config
    own = {f.name for f in dataclasses.fields(SamViTConfig)}
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    extra = {k: v for k, v in fields.items() if k not in own and k != "teacher"}
    return biglittle_config_for(stored, config.name, **extra)


def distilled_checkpoint_error(path: PathLike, name: str) -> CheckpointError:
    """A big.LITTLE checkpoint with E-blocks and routers, asked for in the training-free mode."""
    return CheckpointError(
        f"{path}: holds a distilled big.LITTLE model ({name}, with E-blocks and routers), which "
        "runs in the learned mode: load it without training_free (checkpoint=...). "
        "training_free=True is for official SAM weights (sam_checkpoint=sam_vit_b_01ec64.pth...)"
    )


def training_free_checkpoint_error(path: PathLike, name: str) -> CheckpointError:
    """A training-free big.LITTLE checkpoint (SAM's weights alone) asked for in the learned mode."""
    return CheckpointError(
        f"{path}: holds a training-free {name} model (SAM's weights, no E-blocks or routers): "
        "load it without training_free=False. For fresh E-blocks and routers on SAM's weights, "
        "pass the official SAM file as sam_checkpoint=... with training_free=False"
    )


def check_inheritable(config: BigLittleConfig, state: StateDict, path: PathLike) -> None:
    """A SAM state dict a big.LITTLE ``config`` can inherit from: not big.LITTLE itself, and not a
    recognized SAM of another size (both sizes named)."""
    looks_like = guess_model_name(state)
    if looks_like is not None and looks_like.startswith("bl_"):
        if config.training_free:
            raise distilled_checkpoint_error(path, looks_like)
        raise CheckpointError(
            f"{path}: is a big.LITTLE checkpoint ({looks_like}); pass it as checkpoint=..., "
            "sam_checkpoint is for official SAM files"
        )
    if looks_like in SAM_CONFIGS:
        size = SAM_CONFIGS[looks_like]
        if (size.embed_dim, size.depth) != (config.embed_dim, config.depth):
            raise CheckpointError(
                f"{path}: does not fit model '{config.name}': it is SAM {_pretty(looks_like)}, "
                f"but {config.name} is "
                f"{config.embed_dim} wide with {config.depth} blocks and inherits from SAM "
                f"{config.teacher}; give a {config.teacher} checkpoint"
            )
