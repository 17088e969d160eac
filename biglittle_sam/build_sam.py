"""The model registry, and the one way to load a checkpoint.

``sam_model_registry[name](checkpoint=None, sam_checkpoint=None, keep_ratio=None, **overrides)``
returns an upstream ``segment_anything.modeling.Sam`` in eval mode, so ``SamPredictor`` and
``SamAutomaticMaskGenerator`` take it unchanged.

- ``default``, ``vit_h``, ``vit_l``, ``vit_b``: built by ``segment_anything`` itself; ``checkpoint``
  is an official SAM checkpoint.
- ``vit_tiny``: a plain SAM at test size (the toy benchmark's teacher).
- ``bl_b``, ``bl_l``, ``bl_h``, ``bl_tiny``, ``bl_b_lite`` (bl_b with lighter E-blocks):
  big.LITTLE. ``checkpoint`` is a full big.LITTLE SAM checkpoint (loaded strictly);
  ``sam_checkpoint`` is an official SAM checkpoint to inherit the
  patch and position embeddings, the P-blocks, the neck, the prompt encoder and the mask decoder
  from. An official SAM file given as ``checkpoint=`` is refused with a message that says to pass
  it as ``sam_checkpoint=``: the result would not be distilled, which a strict ``checkpoint=``
  load must never hide. A SAM file of another size names both sizes.

:func:`load_sam` loads any checkpoint (a path, or ``NAME=PATH``) whichever model it holds, and
:func:`build_model_from_spec` builds what a command-line model spec names; both read files through
:func:`resolve_checkpoint`, which validates a stored config before anything is built.
"""

from __future__ import annotations

import dataclasses
import os
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

import torch
from segment_anything import sam_model_registry as upstream_registry
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)
from torch import nn

from .checkpoint import (
    CheckpointError,
    CheckpointNotFoundError,
    checkpoint_config,
    describe_state_dict,
    guess_model_name,
    load_state_dict_strict,
    read_checkpoint,
    split_checkpoint,
)
from .config import (
    BIGLITTLE_CONFIGS,
    SAM_CONFIGS,
    BigLittleConfig,
    SamViTConfig,
    get_config,
    validate_keep_ratio,
)
from .model_spec import ModelSpec, ModelSpecError, split_named_path
from .modeling import ImageEncoderBigLittle
from .modeling.encoder_ops import (
    get_keep_ratio,
    keep_ratio_context,
    model_config,
    set_keep_ratio,
    swap_image_encoder,
)

__all__ = [
    "sam_model_registry",
    "build_sam_from_config",
    "swap_image_encoder",
    "set_keep_ratio",
    "get_keep_ratio",
    "keep_ratio_context",
    "model_config",
    "inherit_from_sam",
    "read_sam_checkpoint",
    "resolve_checkpoint",
    "load_sam",
    "is_official_sam_checkpoint",
    "build_model_from_spec",
]

PathLike = Union[str, os.PathLike]
StateDict = Dict[str, torch.Tensor]
PIXEL_MEAN = (123.675, 116.28, 103.53)  # SAM's ImageNet normalization, in 0..255
PIXEL_STD = (58.395, 57.12, 57.375)
# Keys of a big.LITTLE model that a plain SAM checkpoint cannot provide: they start fresh.
NEW_IN_BIGLITTLE = (".little.", ".router.")


def _build_vit_encoder(config: SamViTConfig) -> ImageEncoderViT:
    return ImageEncoderViT(
        depth=config.depth,
        embed_dim=config.embed_dim,
        img_size=config.img_size,
        mlp_ratio=config.mlp_ratio,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        num_heads=config.num_heads,
        patch_size=config.patch_size,
        qkv_bias=config.qkv_bias,
        use_rel_pos=config.use_rel_pos,
        global_attn_indexes=tuple(config.global_attn_indexes),
        window_size=config.window_size,
        out_chans=config.out_chans,
    )


def build_sam_from_config(config: SamViTConfig) -> Sam:
    """An upstream ``Sam`` with freshly initialized weights, in eval mode.

    A ``BigLittleConfig`` gets an :class:`ImageEncoderBigLittle`; a ``SamViTConfig`` gets SAM's own
    ``ImageEncoderViT``. Prompt encoder and mask decoder are ``segment_anything``'s, sized by
    the config.
    """
    encoder: nn.Module
    if isinstance(config, BigLittleConfig):
        encoder = ImageEncoderBigLittle(config)
    else:
        encoder = _build_vit_encoder(config)
    grid = config.grid_size
    sam = Sam(
        image_encoder=encoder,
        prompt_encoder=PromptEncoder(
            embed_dim=config.out_chans,
            image_embedding_size=(grid, grid),
            input_image_size=(config.img_size, config.img_size),
            mask_in_chans=config.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=config.decoder_depth,
                embedding_dim=config.out_chans,
                mlp_dim=config.decoder_mlp_dim,
                num_heads=config.decoder_heads,
            ),
            transformer_dim=config.out_chans,
            iou_head_depth=3,
            iou_head_hidden_dim=config.iou_head_hidden_dim,
        ),
        pixel_mean=list(PIXEL_MEAN),
        pixel_std=list(PIXEL_STD),
    )
    sam.eval()
    return sam


def _check_sam_flat(state: StateDict, path: PathLike) -> None:
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


def _canonical(name: Optional[str]) -> Optional[str]:
    """``default`` is SAM ViT-H, as in segment_anything."""
    return "vit_h" if name == "default" else name


def _pretty(name: str) -> str:
    config = get_config(name)
    return f"{name} ({config.embed_dim} wide, {config.depth} blocks)"


def _official_file_error(path: PathLike, name: str, looks_like: str) -> CheckpointError:
    """An official SAM file given as ``checkpoint=`` to a big.LITTLE model: say what to do."""
    teacher = BIGLITTLE_CONFIGS[name].teacher
    if looks_like == teacher:
        return CheckpointError(
            f"{path}: is an official SAM checkpoint ({_pretty(looks_like)}), not a big.LITTLE "
            f"one. To build {name} from it (P-blocks, neck and decoder inherited; E-blocks and "
            f"routers fresh, not distilled), pass it as sam_checkpoint=... instead of "
            "checkpoint=..."
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
    wanted = _canonical(name)
    state, meta = read_sam_checkpoint(path)
    config = checkpoint_config(meta, state, path)
    looks_like = guess_model_name(state)
    if config is None:
        if wanted in BIGLITTLE_CONFIGS and looks_like in SAM_CONFIGS:
            raise _official_file_error(path, wanted, looks_like)
        guessed = wanted or looks_like
        if guessed is None or guessed not in SAM_CONFIGS and guessed not in BIGLITTLE_CONFIGS:
            raise CheckpointError(
                f"{path}: cannot tell which model this is (no stored config, and it looks like "
                f"{describe_state_dict(state)}); name it: one of {sorted(sam_model_registry)}"
            )
        config = get_config(guessed)
    custom = custom_sizes and not isinstance(config, BigLittleConfig)
    if wanted is not None and wanted != config.name and not custom:
        raise CheckpointError(
            f"{path}: holds a '{config.name}' model, not '{name}'; build it as '{config.name}' "
            f"(sam_model_registry['{config.name}'], --model {config.name})"
        )
    return config, state, meta


def _teacher_tag(meta: Mapping[str, Any]) -> Optional[str]:
    teacher = meta.get("teacher")
    return teacher if isinstance(teacher, str) else None


def load_sam(
    source: PathLike, name: Optional[str] = None
) -> Tuple[Sam, SamViTConfig, Dict[str, Any]]:
    """Any SAM or big.LITTLE checkpoint as a ``Sam`` in eval mode (strict load).

    Arguments:
      source: a checkpoint path, or a string ``NAME=PATH`` with a registry name (an existing file
        named like that wins; a ``Path`` is never split).
      name: the registry name of the model (``vit_b``, ``bl_b``...), needed only for a file that
        stores no config and whose size is not recognized; it must agree with the file.

    Returns:
      The model, its config (the stored one, or the registry's) and the file's metadata.

    Raises:
      CheckpointError: see :func:`resolve_checkpoint` (also for a missing file).
    """
    label, path = split_named_path(source) if isinstance(source, str) else (None, Path(source))
    if label is not None:
        if label not in sam_model_registry:
            raise CheckpointError(
                f"{source}: unknown model {label!r} before '='; expected NAME=PATH with NAME one "
                f"of {sorted(sam_model_registry)}, or a path"
            )
        if name is not None and _canonical(name) != _canonical(label):
            raise CheckpointError(f"{source}: names model {label!r}, but {name!r} was asked for")
        name = label
    config, state, meta = resolve_checkpoint(path, name)
    sam = build_sam_from_config(config)
    load_state_dict_strict(sam, state, path, config.name)
    if isinstance(config, BigLittleConfig):
        sam.image_encoder.teacher = _teacher_tag(meta) or config.teacher
    sam.eval()
    return sam, config, meta


def is_official_sam_checkpoint(path: PathLike) -> bool:
    """Whether a file is a plain SAM checkpoint (official, or a plain ``vit_*`` of this project).

    Used where one argument may name either a big.LITTLE checkpoint or the SAM file to inherit
    from (``bl_b=sam_vit_b_01ec64.pth`` in a model spec).
    """
    state, meta = read_sam_checkpoint(path)
    config = meta.get("config")
    if isinstance(config, Mapping):
        return "little_dim" not in config
    looks_like = guess_model_name(state)
    if looks_like is not None:
        return not looks_like.startswith("bl_")
    return not any(".little." in k for k in state)


def build_model_from_spec(
    spec: ModelSpec, seed: int = 0, sam_checkpoint: Optional[PathLike] = None
) -> Sam:
    """The model a parsed spec names, in eval mode on the CPU.

    A big.LITTLE spec whose checkpoint is an official SAM file inherits from it (E-blocks and
    routers fresh); any other checkpoint loads strictly. Weights no file provides (all of them for
    a bare NAME) are drawn from ``seed``, so every process builds the same model. The spec's keep
    ratio is not applied: one module may serve several ratios, each set when it encodes.

    Raises:
      ModelSpecError: a missing checkpoint file, or arguments the model does not take.
      CheckpointError: a checkpoint that is unreadable or does not fit the model.
    """
    if sam_checkpoint is not None and not spec.is_big_little:
        raise ModelSpecError(
            f"model spec {spec.text!r}: a SAM file to inherit from is for big.LITTLE models "
            f"(bl_*); for {spec.name} give it as the checkpoint"
        )
    kwargs: Dict[str, Any] = {}
    if sam_checkpoint is not None:
        kwargs["sam_checkpoint"] = sam_checkpoint
    try:
        if spec.checkpoint is not None:
            inherit = spec.is_big_little and is_official_sam_checkpoint(spec.checkpoint)
            if inherit and sam_checkpoint is not None:
                raise ModelSpecError(
                    f"model spec {spec.text!r}: names an official SAM file and another one is "
                    f"given to inherit from ({sam_checkpoint}); give one"
                )
            kwargs["sam_checkpoint" if inherit else "checkpoint"] = spec.checkpoint
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return sam_model_registry[spec.name](**kwargs)
    except ModelSpecError:
        raise
    except CheckpointNotFoundError as e:
        raise ModelSpecError(f"model spec {spec.text!r}: {e}") from None
    except CheckpointError:
        raise
    except (TypeError, ValueError) as e:
        raise ModelSpecError(f"model spec {spec.text!r}: {e}") from None


def _plain_sam_path(
    name: str,
    checkpoint: Optional[PathLike],
    sam_checkpoint: Optional[PathLike],
    keep_ratio: Optional[float],
) -> Optional[PathLike]:
    """The checkpoint of a plain SAM builder call (either argument names it), after checks."""
    if checkpoint is not None and sam_checkpoint is not None:
        raise ValueError(f"{name}: give checkpoint or sam_checkpoint, not both (they are the same)")
    if keep_ratio is not None and validate_keep_ratio(keep_ratio) != 1.0:
        raise ValueError(f"{name} is plain SAM and has no keep ratio below 1 (got {keep_ratio})")
    return checkpoint if checkpoint is not None else sam_checkpoint


def _build_upstream(name: str) -> Callable[..., Sam]:
    def builder(
        checkpoint: Optional[PathLike] = None,
        sam_checkpoint: Optional[PathLike] = None,
        keep_ratio: Optional[float] = None,
        **overrides: Any,
    ) -> Sam:
        path = _plain_sam_path(name, checkpoint, sam_checkpoint, keep_ratio)
        if overrides:
            raise TypeError(
                f"{name} is built by segment_anything unchanged and takes no overrides "
                f"(got {sorted(overrides)}); use 'vit_tiny' or build_sam_from_config for "
                "custom sizes"
            )
        state: Optional[StateDict] = None
        if path is not None:
            _, state, _ = resolve_checkpoint(path, name)
        sam = upstream_registry[name](checkpoint=None)
        if state is not None:
            load_state_dict_strict(sam, state, path or "", name)
        sam.eval()
        return sam

    builder.__name__ = f"build_sam_{name}"
    builder.__doc__ = (
        f"SAM '{name}' as segment_anything builds it; checkpoint: an official SAM file."
    )
    return builder


def _build_tiny_sam(
    checkpoint: Optional[PathLike] = None,
    sam_checkpoint: Optional[PathLike] = None,
    keep_ratio: Optional[float] = None,
    **overrides: Any,
) -> Sam:
    """A plain SAM at test size (``vit_tiny``); ``overrides`` replace config fields."""
    path = _plain_sam_path("vit_tiny", checkpoint, sam_checkpoint, keep_ratio)
    config = SAM_CONFIGS["vit_tiny"]
    state: Optional[StateDict] = None
    if path is not None:
        config, state, _ = resolve_checkpoint(path, "vit_tiny", custom_sizes=True)
    config = dataclasses.replace(config, **overrides)
    sam = build_sam_from_config(config)
    if state is not None:
        load_state_dict_strict(sam, state, path or "", config.name)
    return sam


def _build_biglittle(name: str) -> Callable[..., Sam]:
    def builder(
        checkpoint: Optional[PathLike] = None,
        sam_checkpoint: Optional[PathLike] = None,
        keep_ratio: Optional[float] = None,
        **overrides: Any,
    ) -> Sam:
        config = BIGLITTLE_CONFIGS[name]
        state: Optional[StateDict] = None
        teacher: Optional[str] = None
        if checkpoint is not None:
            config, state, meta = resolve_checkpoint(checkpoint, name)
            teacher = _teacher_tag(meta)
        config = dataclasses.replace(config, **overrides)
        if keep_ratio is not None:
            config = dataclasses.replace(config, keep_ratio=validate_keep_ratio(keep_ratio))
        sam_state: Optional[StateDict] = None
        if sam_checkpoint is not None:  # read and checked before the model is built
            sam_state = read_sam_checkpoint(sam_checkpoint)[0]
            _check_inheritable(config, sam_state, sam_checkpoint)
        sam = build_sam_from_config(config)
        if sam_checkpoint is not None:
            teacher = inherit_from_sam(sam, sam_checkpoint, sam_state)
        if state is not None:
            load_state_dict_strict(sam, state, checkpoint or "", name)
        sam.image_encoder.teacher = teacher or config.teacher
        sam.eval()
        return sam

    builder.__name__ = f"build_sam_{name}"
    builder.__doc__ = (
        f"big.LITTLE SAM '{name}'. checkpoint: a full big.LITTLE SAM checkpoint, loaded strictly "
        "(an official SAM file here is an error that says to pass it as sam_checkpoint); "
        "sam_checkpoint: an official SAM checkpoint to inherit from (not distilled); keep_ratio "
        "in (0, 1]."
    )
    return builder


def _check_inheritable(config: BigLittleConfig, state: StateDict, path: PathLike) -> None:
    """A SAM state dict a big.LITTLE ``config`` can inherit from: not big.LITTLE itself, and not a
    recognized SAM of another size (both sizes named)."""
    looks_like = guess_model_name(state)
    if looks_like is not None and looks_like.startswith("bl_"):
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


def inherit_from_sam(sam: Sam, sam_checkpoint: PathLike, state: Optional[StateDict] = None) -> str:
    """Load an official SAM checkpoint into a big.LITTLE ``Sam``: every SAM weight, strictly.

    The patch and position embeddings, the P-blocks, the neck, the prompt encoder and the mask
    decoder come from the file; E-blocks (gamma 0) and routers keep their fresh values. ``state``
    is the file's state dict when the caller has read it already. Returns the teacher tag
    recorded in checkpoints, ``"<sam name>:<file name>"``.

    Raises:
      CheckpointError: the file is a big.LITTLE checkpoint, or SAM of another size (naming both).
    """
    encoder = sam.image_encoder
    if not isinstance(encoder, ImageEncoderBigLittle):
        raise TypeError(f"expected a big.LITTLE SAM model, got encoder {type(encoder).__name__}")
    config = encoder.config
    sam_state = state if state is not None else read_sam_checkpoint(sam_checkpoint)[0]
    _check_inheritable(config, sam_state, sam_checkpoint)
    load_state_dict_strict(
        sam, sam_state, sam_checkpoint, config.name, allowed_missing=NEW_IN_BIGLITTLE
    )
    return f"{config.teacher}:{Path(sam_checkpoint).name}"


sam_model_registry: Dict[str, Callable[..., Sam]] = {
    "default": _build_upstream("default"),
    "vit_h": _build_upstream("vit_h"),
    "vit_l": _build_upstream("vit_l"),
    "vit_b": _build_upstream("vit_b"),
    "vit_tiny": _build_tiny_sam,
    "bl_b": _build_biglittle("bl_b"),
    "bl_l": _build_biglittle("bl_l"),
    "bl_h": _build_biglittle("bl_h"),
    "bl_tiny": _build_biglittle("bl_tiny"),
    "bl_b_lite": _build_biglittle("bl_b_lite"),
}
