"""The model registry, and the one way to load a checkpoint.

``sam_model_registry[name](checkpoint=None, sam_checkpoint=None, keep_ratio=None, **overrides)``
returns an upstream ``segment_anything.modeling.Sam`` in eval mode, so ``SamPredictor`` and
``SamAutomaticMaskGenerator`` take it unchanged.

- ``default``, ``vit_h``, ``vit_l``, ``vit_b``: built by ``segment_anything`` itself; ``checkpoint``
  is an official SAM checkpoint.
- ``vit_tiny``: a plain SAM at test size (the proxy benchmark's teacher).
- ``bl_b``, ``bl_l``, ``bl_h``, ``bl_tiny``, ``bl_b_lite`` (bl_b with lighter E-blocks):
  big.LITTLE. ``checkpoint`` is a big.LITTLE checkpoint (loaded strictly) or an official SAM file;
  ``sam_checkpoint`` is an official SAM file to inherit the patch and position embeddings, the
  P-blocks, the neck, the prompt encoder and the mask decoder from. A SAM file of another size
  names both sizes.
- ``training_free`` (big.LITTLE names; ``None``, ``True`` or ``False``) picks the mode:

  - ``None`` (the default): the training-free mode when the model's only weights are an official
    SAM file (``sam_checkpoint=``, or the file as ``checkpoint=``, as pipelines pass it), so
    official weights never mean random E-blocks; otherwise the learned mode (a big.LITTLE
    checkpoint keeps the mode it was saved in; no weights at all builds fresh E-blocks and
    routers, as the speed benchmark does).
  - ``True``: the training-free mode (``modeling.training_free``): SAM's weights alone, no
    E-blocks, no routers, nothing to train; ``token_score``, ``skip_rule``, ``dense_layers`` and
    ``dense_global`` choose the recipe (``BigLittleConfig``). A distilled checkpoint is refused,
    naming its mode. A plain SAM checkpoint of this project with custom sizes (the proxy teacher)
    lends the model its sizes.
  - ``False``: fresh E-blocks (gamma 0) and routers on SAM's weights (``sam_checkpoint=``): what
    distillation and fine-tuning start from; not distilled, so an official file as
    ``checkpoint=`` is refused with a message that says so.

  ``sam_model_registry["bl_b"](checkpoint="sam_vit_b_01ec64.pth", keep_ratio=0.5)`` is the
  training-free mode; at keep ratio 1 it equals SAM.

Each name has its builder (``build_bl_b``, ``build_vit_tiny``...), which fills in its config and
calls one private builder per kind: segment_anything's, a custom-size plain SAM, big.LITTLE.

:func:`load_sam` loads any checkpoint (a path, or ``NAME=PATH``) whichever model it holds, and
:func:`build_model_from_spec` builds what a command-line model spec names; both read files through
:func:`resolve_checkpoint` (in ``model_files``), which validates a stored config before anything is
built.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union, cast

import torch
from segment_anything import sam_model_registry as upstream_registry
from segment_anything.modeling import Sam

from .assemble import (  # noqa: F401 (re-exported)
    NEW_IN_BIGLITTLE,
    PIXEL_MEAN,
    PIXEL_STD,
    build_sam_from_config,
    inherit_from_sam,
)
from .checkpoint import CheckpointError, CheckpointNotFoundError, load_state_dict_strict
from .config import (
    BIGLITTLE_CONFIGS,
    SAM_CONFIGS,
    BigLittleConfig,
    SamViTConfig,
    validate_keep_ratio,
)
from .model_files import (
    adopt_sam_sizes,
    canonical_name,
    check_inheritable,
    distilled_checkpoint_error,
    is_official_sam_checkpoint,
    read_sam_checkpoint,
    read_weight_files,
    resolve_checkpoint,
    resolve_loaded,
    teacher_tag,
    training_free_checkpoint_error,
)
from .model_spec import ModelSpec, ModelSpecError, split_named_path
from .modeling import old_layout_missing
from .modeling.encoder_ops import (
    get_keep_ratio,
    keep_ratio_context,
    model_config,
    set_keep_ratio,
    swap_image_encoder,
)
from .timm_student import timm_record, timm_student_from_loaded

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
    "sam_from_loaded",
    "is_official_sam_checkpoint",
    "build_model_from_spec",
    "build_default",
    "build_vit_h",
    "build_vit_l",
    "build_vit_b",
    "build_vit_tiny",
    "build_bl_b",
    "build_bl_l",
    "build_bl_h",
    "build_bl_tiny",
    "build_bl_b_lite",
    "register_with_segment_anything",
]

PathLike = Union[str, os.PathLike]
StateDict = Dict[str, torch.Tensor]

# segment_anything's own builders, taken when this module is imported. Looking them up in its
# registry at call time would recurse once a user merges this registry into that one
# (``segment_anything.sam_model_registry.update(biglittle_sam.sam_model_registry)``).
_UPSTREAM_BUILDERS: Dict[str, Callable[..., Sam]] = dict(upstream_registry)


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
        if name is not None and canonical_name(name) != canonical_name(label):
            raise CheckpointError(f"{source}: names model {label!r}, but {name!r} was asked for")
        name = label
    config, state, meta = resolve_checkpoint(path, name)
    return sam_from_loaded(config, state, meta, path), config, meta


def sam_from_loaded(
    config: SamViTConfig, state: Dict[str, Any], meta: Mapping[str, Any], path: PathLike
) -> Sam:
    """The ``Sam`` of a checkpoint already read and resolved (``resolve_checkpoint`` or
    ``resolve_loaded``), strictly loaded, in eval mode."""
    sam = build_sam_from_config(config)
    load_state_dict_strict(sam, state, path, config.name)
    if isinstance(config, BigLittleConfig):
        sam.image_encoder.teacher = teacher_tag(meta) or config.teacher
    return sam.eval()


def build_model_from_spec(
    spec: ModelSpec, seed: int = 0, sam_checkpoint: Optional[PathLike] = None
) -> Sam:
    """The model a parsed spec names, in eval mode on the CPU.

    A big.LITTLE spec whose only weights are an official SAM file (its checkpoint, or
    ``sam_checkpoint``) runs in the training-free mode (the registry's rule); any other checkpoint
    loads strictly. Weights no file provides (all of them for
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
    if keep_ratio is not None:
        validate_keep_ratio(keep_ratio, plain_sam=name)
    return checkpoint if checkpoint is not None else sam_checkpoint


def _build_upstream_sam(
    name: str,
    checkpoint: Optional[PathLike],
    sam_checkpoint: Optional[PathLike],
    keep_ratio: Optional[float],
    overrides: Mapping[str, Any],
) -> Sam:
    """SAM ``name`` as segment_anything builds it, loaded strictly from an official SAM file."""
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
    sam = _UPSTREAM_BUILDERS[name](checkpoint=None)
    if state is not None:
        load_state_dict_strict(sam, state, path or "", name)
    sam.eval()
    return sam


def _build_custom_sam(
    config: SamViTConfig,
    checkpoint: Optional[PathLike],
    sam_checkpoint: Optional[PathLike],
    keep_ratio: Optional[float],
    overrides: Mapping[str, Any],
) -> Sam:
    """A plain SAM from ``config`` (or a checkpoint's stored sizes), ``overrides`` applied."""
    path = _plain_sam_path(config.name, checkpoint, sam_checkpoint, keep_ratio)
    state: Optional[StateDict] = None
    if path is not None:
        state, meta = read_sam_checkpoint(path)
        if timm_record(meta) is not None:  # a timm dense student (needs timm)
            if overrides:
                raise TypeError(f"{path}: a timm student is rebuilt as stored; no overrides")
            return timm_student_from_loaded(state, meta, path)[0]
        config = resolve_loaded(state, meta, path, config.name, custom_sizes=True)
    config = dataclasses.replace(config, **overrides)
    sam = build_sam_from_config(config)
    if state is not None:
        load_state_dict_strict(sam, state, path or "", config.name)
    return sam


def _build_biglittle_sam(
    config: BigLittleConfig,
    checkpoint: Optional[PathLike],
    sam_checkpoint: Optional[PathLike],
    keep_ratio: Optional[float],
    training_free: Optional[bool],
    overrides: Mapping[str, Any],
) -> Sam:
    """A big.LITTLE SAM from ``config``: loaded strictly from ``checkpoint``, or inheriting the
    SAM weights of ``sam_checkpoint``, in the mode ``read_weight_files`` decides; ``overrides``
    and ``keep_ratio`` applied to the config. A training-free model takes the sizes of a
    custom-size plain SAM checkpoint of its teacher (``adopt_sam_sizes``)."""
    name = config.name
    weights = read_weight_files(checkpoint, sam_checkpoint, training_free)
    teacher: Optional[str] = None
    if weights.state is not None and weights.checkpoint is not None:
        stored = resolve_loaded(weights.state, weights.meta, weights.checkpoint, name)
        config, teacher = cast(BigLittleConfig, stored), teacher_tag(weights.meta)  # named bl_*
        if weights.training_free and not config.training_free:
            raise distilled_checkpoint_error(weights.checkpoint, config.name)
        if weights.training_free is False and config.training_free:
            raise training_free_checkpoint_error(weights.checkpoint, config.name)
    if weights.training_free is not None:
        config = dataclasses.replace(config, training_free=weights.training_free)
    sam_path, sam_state = weights.sam_checkpoint, weights.sam_state
    if config.training_free and sam_state is not None and sam_path is not None:
        config = adopt_sam_sizes(config, weights.sam_meta, sam_state, sam_path)
    config = dataclasses.replace(config, **overrides)
    if keep_ratio is not None:
        config = dataclasses.replace(config, keep_ratio=validate_keep_ratio(keep_ratio))
    if sam_state is not None and sam_path is not None:  # checked before the model is built
        check_inheritable(config, sam_state, sam_path)
    sam = build_sam_from_config(config)
    if sam_state is not None and sam_path is not None:
        teacher = inherit_from_sam(sam, sam_path, sam_state)
    if weights.state is not None:  # an old layout lacks the context modules: they keep their init
        missing_ok = old_layout_missing(config, weights.state)
        load_state_dict_strict(sam, weights.state, weights.checkpoint or "", name, missing_ok)
    sam.image_encoder.teacher = teacher or config.teacher
    sam.eval()
    return sam


# The registry's builders. Each takes (checkpoint=None, sam_checkpoint=None, keep_ratio=None,
# **overrides), big.LITTLE ones also training_free=None: see the module docstring. Plain SAM:
# checkpoint and sam_checkpoint both name the official file, and the only keep ratio is 1.


def build_default(
    checkpoint: Optional[PathLike] = None,
    sam_checkpoint: Optional[PathLike] = None,
    keep_ratio: Optional[float] = None,
    **overrides: Any,
) -> Sam:
    """SAM ViT-H, segment_anything's ``default``."""
    return _build_upstream_sam("default", checkpoint, sam_checkpoint, keep_ratio, overrides)


def build_vit_h(
    checkpoint: Optional[PathLike] = None,
    sam_checkpoint: Optional[PathLike] = None,
    keep_ratio: Optional[float] = None,
    **overrides: Any,
) -> Sam:
    """SAM ViT-H as segment_anything builds it."""
    return _build_upstream_sam("vit_h", checkpoint, sam_checkpoint, keep_ratio, overrides)


def build_vit_l(
    checkpoint: Optional[PathLike] = None,
    sam_checkpoint: Optional[PathLike] = None,
    keep_ratio: Optional[float] = None,
    **overrides: Any,
) -> Sam:
    """SAM ViT-L as segment_anything builds it."""
    return _build_upstream_sam("vit_l", checkpoint, sam_checkpoint, keep_ratio, overrides)


def build_vit_b(
    checkpoint: Optional[PathLike] = None,
    sam_checkpoint: Optional[PathLike] = None,
    keep_ratio: Optional[float] = None,
    **overrides: Any,
) -> Sam:
    """SAM ViT-B as segment_anything builds it."""
    return _build_upstream_sam("vit_b", checkpoint, sam_checkpoint, keep_ratio, overrides)


def build_vit_tiny(
    checkpoint: Optional[PathLike] = None,
    sam_checkpoint: Optional[PathLike] = None,
    keep_ratio: Optional[float] = None,
    **overrides: Any,
) -> Sam:
    """A plain SAM at test size; ``overrides`` (or a checkpoint's stored config) set any size."""
    config = SAM_CONFIGS["vit_tiny"]
    return _build_custom_sam(config, checkpoint, sam_checkpoint, keep_ratio, overrides)


def build_bl_b(
    checkpoint: Optional[PathLike] = None,
    sam_checkpoint: Optional[PathLike] = None,
    keep_ratio: Optional[float] = None,
    training_free: Optional[bool] = None,
    **overrides: Any,
) -> Sam:
    """big.LITTLE SAM on SAM ViT-B's P-blocks (E-blocks 192 wide)."""
    config = BIGLITTLE_CONFIGS["bl_b"]
    return _build_biglittle_sam(
        config, checkpoint, sam_checkpoint, keep_ratio, training_free, overrides
    )


def build_bl_l(
    checkpoint: Optional[PathLike] = None,
    sam_checkpoint: Optional[PathLike] = None,
    keep_ratio: Optional[float] = None,
    training_free: Optional[bool] = None,
    **overrides: Any,
) -> Sam:
    """big.LITTLE SAM on SAM ViT-L's P-blocks (E-blocks 256 wide)."""
    config = BIGLITTLE_CONFIGS["bl_l"]
    return _build_biglittle_sam(
        config, checkpoint, sam_checkpoint, keep_ratio, training_free, overrides
    )


def build_bl_h(
    checkpoint: Optional[PathLike] = None,
    sam_checkpoint: Optional[PathLike] = None,
    keep_ratio: Optional[float] = None,
    training_free: Optional[bool] = None,
    **overrides: Any,
) -> Sam:
    """big.LITTLE SAM on SAM ViT-H's P-blocks (E-blocks 320 wide)."""
    config = BIGLITTLE_CONFIGS["bl_h"]
    return _build_biglittle_sam(
        config, checkpoint, sam_checkpoint, keep_ratio, training_free, overrides
    )


def build_bl_tiny(
    checkpoint: Optional[PathLike] = None,
    sam_checkpoint: Optional[PathLike] = None,
    keep_ratio: Optional[float] = None,
    training_free: Optional[bool] = None,
    **overrides: Any,
) -> Sam:
    """big.LITTLE SAM on the P-blocks of ``vit_tiny``, at test size."""
    config = BIGLITTLE_CONFIGS["bl_tiny"]
    return _build_biglittle_sam(
        config, checkpoint, sam_checkpoint, keep_ratio, training_free, overrides
    )


def build_bl_b_lite(
    checkpoint: Optional[PathLike] = None,
    sam_checkpoint: Optional[PathLike] = None,
    keep_ratio: Optional[float] = None,
    training_free: Optional[bool] = None,
    **overrides: Any,
) -> Sam:
    """``bl_b`` with lighter E-blocks (96 wide, MLP ratio 2) and pooled keys and values."""
    config = BIGLITTLE_CONFIGS["bl_b_lite"]
    return _build_biglittle_sam(
        config, checkpoint, sam_checkpoint, keep_ratio, training_free, overrides
    )


sam_model_registry: Dict[str, Callable[..., Sam]] = {
    "default": build_default,
    "vit_h": build_vit_h,
    "vit_l": build_vit_l,
    "vit_b": build_vit_b,
    "vit_tiny": build_vit_tiny,
    "bl_b": build_bl_b,
    "bl_l": build_bl_l,
    "bl_h": build_bl_h,
    "bl_tiny": build_bl_tiny,
    "bl_b_lite": build_bl_b_lite,
}


def register_with_segment_anything() -> Dict[str, Callable[..., Sam]]:
    """Add the big.LITTLE builders to ``segment_anything.sam_model_registry``, for pipelines that
    take a model-type string and a checkpoint path.

    After this call, ``segment_anything.sam_model_registry["bl_b"](checkpoint=path)`` with the
    official ``sam_vit_b_01ec64.pth`` builds the training-free mode (the registry's rule for an
    official file) at the default keep ratio. Only the ``bl_*`` names are added;
    segment_anything's own entries (``default``, ``vit_h``, ``vit_l``, ``vit_b``) are left as
    they are. Calling it again changes nothing.

    Returns:
      segment_anything's registry (the same dict object, updated in place).
    """
    import segment_anything

    registry: Dict[str, Callable[..., Sam]] = segment_anything.sam_model_registry
    registry.update({k: v for k, v in sam_model_registry.items() if k.startswith("bl_")})
    return registry
