"""The swap for SAM 3 users: a loaded SAM 3 model with the big.LITTLE backbone, in one call.

    from transformers import Sam3Model
    import biglittle_sam.hf as blhf

    model = blhf.to_biglittle_sam3(Sam3Model.from_pretrained("facebook/sam3"), keep_ratio=0.5)
    model.save_pretrained("sam3-bl")   # AutoModel.from_pretrained("sam3-bl") loads it back

:func:`to_biglittle_sam3` works on any transformers model that holds SAM 3's ViT backbone (a
``Sam3ViTModel``, as ``Sam3VisionModel.backbone``): ``Sam3Model`` (the detector),
``Sam3TrackerModel`` (points and boxes), ``Sam3VisionModel`` and the backbone itself. Weights are
kept 1:1 (the layers are SAM 3's, with the same names), the config is updated so that
``save_pretrained`` / ``AutoModel.from_pretrained`` round-trip, and the input is left unchanged.
"""

from __future__ import annotations

import copy
import os
import re
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

from torch import nn
from transformers import AutoModel, PreTrainedModel, Sam3ViTConfig, Sam3ViTModel

from ..config import validate_keep_ratio
from .modeling import refuse_partial_load
from .sam3_config import BigLittleSam3ViTConfig, sam3_config_with
from .sam3_model import BigLittleSam3ViTModel

__all__ = [
    "to_biglittle_sam3",
    "load_sam3",
    "sam3_backbones",
    "set_sam3_keep_ratio",
    "sam3_keep_ratio_context",
]

Source = Union[str, "os.PathLike[str]"]


def sam3_backbones(model: nn.Module) -> List[Tuple[str, Sam3ViTModel]]:
    """(name, module) of every SAM 3 ViT backbone in ``model`` (``""`` for the model itself)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, Sam3ViTModel)]


def load_sam3(source: Source, **kwargs: Any) -> PreTrainedModel:
    """``AutoModel.from_pretrained(source, **kwargs)``, strictly: a checkpoint with missing,
    unexpected or misshapen weights raises ``CheckpointError`` naming them (transformers alone
    would start them at random and warn). Works for stock and big.LITTLE SAM 3 folders."""
    kwargs.pop("output_loading_info", None)
    model, info = AutoModel.from_pretrained(source, output_loading_info=True, **kwargs)
    refuse_partial_load(info, source, "the SAM 3 model its config.json describes", hint="")
    return model


# The parameters the LITTLE-block form adds beside SAM 3's layers: the only keys a SAM 3 backbone
# may lack when it is swapped (they start at their zero-initialised values, exact at r = 1).
_NEW_KEYS = re.compile(r"^layers\.\d+\.(little|router)\.")


def _swapped_backbone(stock: Sam3ViTModel, settings: Dict[str, Any]) -> BigLittleSam3ViTModel:
    """A big.LITTLE backbone holding ``stock``'s weights (its device, dtype and mode); E-blocks
    and routers ``stock`` does not have start fresh (zero-initialised)."""
    config = sam3_config_with(stock.config, **settings)
    if getattr(stock.config, "teacher_checkpoint", None):
        config.teacher_checkpoint = stock.config.teacher_checkpoint
    first = next(stock.parameters())
    new = BigLittleSam3ViTModel(config).to(device=first.device, dtype=first.dtype)
    try:
        missing, unexpected = new.load_state_dict(stock.state_dict(), strict=False)
    except RuntimeError as error:  # an E-block of another shape (little_dim, little_heads...)
        raise ValueError(
            f"the SAM 3 backbone's E-blocks do not fit the new LITTLE settings ({error}); keep "
            "little_dim, little_heads, little_mlp_ratio and little_window_size as they were"
        ) from None
    missing = [k for k in missing if not _NEW_KEYS.match(k)]
    if any(_NEW_KEYS.match(k) for k in unexpected):
        raise ValueError(
            "the SAM 3 backbone has trained E-blocks and routers (the LITTLE-block form); swapping "
            "it with training_free=True would drop them: pass training_free=False to keep them"
        )
    if missing or unexpected:  # the same classes: only a modified stock model gets here
        raise ValueError(
            f"the SAM 3 backbone's weights do not fit its config: missing {sorted(missing)}, "
            f"unexpected {sorted(unexpected)}"
        )
    return new.train(stock.training)


def _link_configs(model: nn.Module, swapped: Dict[str, BigLittleSam3ViTModel]) -> None:
    """Point every config that names a swapped backbone's config at the new one (a host whose
    config was copied, not shared, when it built its backbone)."""
    for name, backbone in swapped.items():
        parent_name = name.rpartition(".")[0]
        parent = model.get_submodule(parent_name) if name else None
        parent_config = getattr(parent, "config", None)
        if parent_config is not None and hasattr(parent_config, "backbone_config"):
            parent_config.backbone_config = backbone.config
    for config in _configs(getattr(model, "config", None)):
        inner = getattr(config, "backbone_config", None)
        if isinstance(inner, Sam3ViTConfig) and not isinstance(inner, BigLittleSam3ViTConfig):
            raise ValueError(
                f"{type(model).__name__}: its config holds a SAM 3 backbone config the swap could "
                "not reach; save_pretrained would write the stock backbone"
            )


def _configs(config: Any, depth: int = 0) -> Iterator[Any]:
    """``config`` and its nested sub-configs (vision_config, detector_config, ...)."""
    if config is None or depth > 4 or not hasattr(config, "to_dict"):
        return
    yield config
    for key in getattr(config, "sub_configs", {}) or {}:
        yield from _configs(getattr(config, key, None), depth + 1)


def to_biglittle_sam3(
    model: Union[nn.Module, Source],
    keep_ratio: Optional[float] = None,
    training_free: bool = True,
    **settings: Any,
) -> Any:
    """A SAM 3 model whose ViT backbone is :class:`BigLittleSam3ViTModel`, SAM 3's weights kept.

    Arguments:
      model: a loaded ``Sam3Model``, ``Sam3TrackerModel``, ``Sam3VisionModel`` or ``Sam3ViTModel``
        (left unchanged: the result shares no tensor with it); or a Hub name or folder, loaded
        strictly (:func:`load_sam3`). A model already swapped is re-swapped with new settings.
      keep_ratio: the share of each window's tokens through SAM 3's layers, in (0, 1] (default
        0.5; at 1 the model computes exactly what it did).
      training_free: True: SAM 3's layers alone, routed by a cheap score. False: the LITTLE-block
        form, an E-block and a router beside each routed layer, zero-initialised where the input
        has none (the result then equals the input at keep ratio 1), to be distilled.
      settings: other settings (:data:`~.sam3_config.SAM3_BIGLITTLE_DEFAULTS`): ``dense_layers``,
        ``dense_global``; training-free: ``token_score``, ``skip_rule``; LITTLE-block form:
        ``little_dim``, ``little_heads``, ``little_mlp_ratio``, ``little_window_size``.

    Returns:
      The model, of the input's class, on its device, in its dtype and mode.

    Raises:
      TypeError: a model without a SAM 3 ViT backbone.
      ValueError: a bad setting or a backbone config the routed layers cannot run (named); a
        backbone with E-blocks swapped with ``training_free=True`` (they would be dropped).
      CheckpointError: a folder whose weights do not fit its config.
    """
    if isinstance(model, (str, os.PathLike)):
        source = str(model)
        model = load_sam3(model)
        model.config.name_or_path = source
    found = sam3_backbones(model) if isinstance(model, nn.Module) else []
    if not found:
        raise TypeError(
            f"expected a transformers SAM 3 model (Sam3Model, Sam3TrackerModel, Sam3VisionModel "
            f"or Sam3ViTModel), got {type(model).__name__}"
        )
    if keep_ratio is not None:
        settings["keep_ratio"] = validate_keep_ratio(keep_ratio)
    settings["training_free"] = training_free
    source = getattr(getattr(model, "config", None), "name_or_path", None) or None
    new = {name: _swapped_backbone(stock, settings) for name, stock in found}
    memo: Dict[int, Any] = {}
    for name, stock in found:
        if source and not new[name].config.teacher_checkpoint:
            new[name].config.teacher_checkpoint = source
        memo[id(stock)] = new[name]
        memo[id(stock.config)] = new[name].config
    if "" in new:
        return new[""]
    swapped = copy.deepcopy(model, memo)
    _link_configs(swapped, new)
    return swapped


def _only_backbone(model: nn.Module) -> BigLittleSam3ViTModel:
    """The big.LITTLE SAM 3 backbone of ``model``; TypeError unless there is exactly one."""
    found = [m for _, m in sam3_backbones(model) if isinstance(m, BigLittleSam3ViTModel)]
    if len(found) != 1:
        raise TypeError(
            f"{type(model).__name__} holds {len(found)} big.LITTLE SAM 3 backbones, expected one "
            "(swap it with to_biglittle_sam3 first)"
        )
    return found[0]


def set_sam3_keep_ratio(model: nn.Module, keep_ratio: float) -> None:
    """Set a swapped SAM 3 model's keep ratio (and its config's, so ``save_pretrained`` keeps
    it)."""
    _only_backbone(model).keep_ratio = keep_ratio


@contextmanager
def sam3_keep_ratio_context(model: nn.Module, keep_ratio: float) -> Iterator[None]:
    """Run this thread's forward passes of a swapped SAM 3 model at ``keep_ratio`` inside the
    ``with`` block (the model's own ratio and config are left alone)."""
    with _only_backbone(model).keep_ratio_context(keep_ratio):
        yield
