"""Rebuilding a timm dense student from its checkpoint (state dict + the spec it records).

A timm student's checkpoint holds a state dict and, under ``"dense_student"``, the
:class:`~biglittle_sam.modeling.timm_encoder.TimmStudentSpec` that rebuilds its encoder: never a
pickled module. The registry (``vit_tiny=<file>``) and ``distill`` both load it through
:func:`timm_student_from_loaded`; building it needs timm.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping, Optional, Tuple

from segment_anything.modeling import Sam

from .assemble import build_sam_from_config
from .checkpoint import CheckpointError, PathLike, check_version, load_state_dict_strict
from .config import SamViTConfig, config_from_dict
from .modeling.encoder_ops import swap_image_encoder
from .modeling.timm_encoder import DENSE_KEY, TimmImageEncoder, TimmStudentSpec

__all__ = ["DENSE_KEY", "timm_record", "timm_sam", "timm_student_from_loaded"]


def timm_record(meta: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """The ``dense_student`` record of a timm student's checkpoint metadata, else None."""
    record = meta.get(DENSE_KEY)
    if isinstance(record, Mapping) and record.get("kind") == "timm":
        return dict(record)
    return None


def timm_sam(config: SamViTConfig, spec: TimmStudentSpec) -> Sam:
    """A ``Sam`` of ``config``'s prompt encoder and decoder around a :class:`TimmImageEncoder`
    (the ViT built in passing is the smallest of the geometry, not the teacher's)."""
    stand_in = dataclasses.replace(
        config, embed_dim=config.num_heads, depth=1, global_attn_indexes=()
    )
    encoder = TimmImageEncoder(spec, dataclasses.replace(config, name=spec.name))
    return swap_image_encoder(build_sam_from_config(stand_in), encoder)


def _stored_geometry(meta: Mapping[str, Any], path: PathLike) -> SamViTConfig:
    """The config a timm student's checkpoint stores (the teacher's geometry and decoder).

    Not ``checkpoint_config``: its parameter floor is a ViT encoder's, which a timm student does
    not have; the strict load against the rebuilt model checks the weights instead.
    """
    check_version(meta, path)
    data = meta.get("config")
    if data is None:
        raise CheckpointError(f"{path}: a timm student without its stored config")
    try:
        return config_from_dict(data)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: its stored config is not valid: {e}") from None


def timm_student_from_loaded(
    state: Dict[str, Any], meta: Mapping[str, Any], path: PathLike
) -> Tuple[Sam, SamViTConfig]:
    """The timm student of a checkpoint already read (``read_sam_checkpoint``), rebuilt from its
    record and strictly loaded, in eval mode, with its stored config.

    Raises:
      CheckpointError: no timm record, a bad record, or weights that do not fit it.
    """
    record = timm_record(meta)
    if record is None:
        raise CheckpointError(f"{path}: holds no timm student record ('{DENSE_KEY}')")
    spec = TimmStudentSpec.from_record(record, path)
    config = _stored_geometry(meta, path)
    sam = timm_sam(config, spec)
    load_state_dict_strict(sam, state, path, config.name)
    return sam.eval(), config
