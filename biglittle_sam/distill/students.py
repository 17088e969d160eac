"""Dense students: a small plain encoder distilled from a SAM teacher exactly like a big.LITTLE one.

A user who wants SAM's masks at a fraction of the encoder's cost can also distil a small dense
encoder (MobileSAM: TinyViT; EdgeSAM: RepViT; or simply a narrower ViT). A dense student here is an
upstream ``Sam`` whose prompt encoder and mask decoder are the teacher's and whose image encoder is

- ``"vit"``: SAM's own ``ImageEncoderViT`` at a smaller ``SamViTConfig`` (narrower or shallower,
  ``experiments.proxy.matching.matched_vit``), or
- ``"timm"``: a timm TinyViT or RepViT trunk, sized down (:class:`TimmStudentSpec`), with the
  neck of :class:`TimmImageEncoder` mapping its features onto the teacher's embedding grid.

**Initialisation.** The encoder starts at random (segment_anything's and timm's own inits, drawn
from a seed). A dense student is narrower or shallower than its teacher, so it cannot inherit the
teacher's blocks the way big.LITTLE's P-blocks do; slicing the wider weights (channel pruning) is
another method (a pruned student) and would make the comparison about pruning, not about the
architecture at equal cost. The prompt encoder and mask decoder are the teacher's, as for the
big.LITTLE student.

**Distillation.** :func:`write_dense_student` saves the untrained student as a checkpoint; the
library's ``distill`` starts from it with ``student="dense"`` and ``init_checkpoint`` set to that
file: phase 1 trains the whole encoder (``train_parts="encoder"``; there are no frozen big blocks)
on the cached teacher embeddings, and phase 2 starts from phase 1's ``model.pth`` as for big.LITTLE.
Every checkpoint records the student under ``"dense_student"`` (``{"kind": "vit"}`` or the timm
spec), so :func:`load_student` rebuilds it: a timm student is stored as a state dict plus the spec
that rebuilds it, never as a pickled module, and loads with ``weights_only=True``.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch
from segment_anything.modeling import Sam
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..build_sam import build_sam_from_config, sam_from_loaded
from ..checkpoint import load_state_dict_strict, save_model_checkpoint
from ..config import BigLittleConfig, SamViTConfig
from ..model_files import read_sam_checkpoint, resolve_checkpoint, resolve_loaded
from ..modeling.timm_encoder import (
    DENSE_KEY,
    TIMM_FAMILIES,
    TimmFamily,
    TimmImageEncoder,
    TimmStudentSpec,
)
from ..timm_student import timm_record, timm_sam, timm_student_from_loaded
from ..train.models import file_sha256

__all__ = [
    "DENSE",
    "DENSE_KEY",
    "TIMM_FAMILIES",
    "TimmFamily",
    "TimmImageEncoder",
    "TimmStudentSpec",
    "counted_macs",
    "dense_record",
    "dense_student",
    "load_student",
    "timm_student_from_loaded",
    "write_dense_student",
]

PathLike = Union[str, os.PathLike]
DENSE = "dense"  # DistillSettings.student of a dense student (it starts from init_checkpoint)
# The fields of a plain SAM config that size its encoder's blocks, which a dense ViT student may
# choose; it shares every other one with its teacher (input, grid, embedding and decoder).
_ENCODER_OWN = frozenset(
    {"name", "embed_dim", "depth", "num_heads", "mlp_ratio", "window_size"}
    | {"global_attn_indexes", "qkv_bias", "use_rel_pos"}
)
_GEOMETRY = tuple(f.name for f in dataclasses.fields(SamViTConfig) if f.name not in _ENCODER_OWN)


def counted_macs(encoder: nn.Module, img_size: int) -> int:
    """MACs of one ``img_size`` image through ``encoder``: FlopCounterMode's FLOPs / 2.

    It counts matrix products and convolutions (attention included), not norms or activations:
    on a SAM ViT it equals ``flops.encoder_macs``'s total less its ``"norm"`` (the LayerNorms,
    1 to 2% of the total at the test and proxy sizes).
    """
    device = next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            encoder(torch.zeros(1, 3, img_size, img_size, device=device))
    finally:
        encoder.train(was_training)
    return int(counter.get_total_flops()) // 2


def dense_record(meta: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """The ``dense_student`` entry of a checkpoint's metadata, or None for another model."""
    record = meta.get(DENSE_KEY)
    return dict(record) if isinstance(record, Mapping) else None


def _check_geometry(student: Mapping[str, Any], teacher: SamViTConfig, what: str) -> None:
    """ValueError naming every geometry field where the student differs from the teacher."""
    want = dataclasses.asdict(teacher)
    wrong = [f"{k} {student[k]!r} (teacher {want[k]!r})" for k in student if student[k] != want[k]]
    if wrong:
        raise ValueError(f"{what} does not fit its teacher {teacher.name}: {', '.join(wrong)}")


def dense_student(
    encoder: Union[SamViTConfig, TimmStudentSpec], teacher_checkpoint: PathLike, seed: int = 0
) -> Tuple[Sam, SamViTConfig, Dict[str, Any]]:
    """An untrained dense student of the SAM in ``teacher_checkpoint``.

    Arguments:
      encoder: a plain ``SamViTConfig`` (a smaller ViT of the teacher's geometry) or a
        :class:`TimmStudentSpec`.
      teacher_checkpoint: the teacher; its prompt encoder and mask decoder are loaded.
      seed: draws the encoder's random weights.

    Returns:
      The student (eval mode), its config (for a timm student: the teacher's geometry, named after
      the spec) and its ``dense_student`` record.

    Raises:
      ValueError: a big.LITTLE config, or an encoder whose geometry differs from the teacher's.
    """
    teacher, state, _ = resolve_checkpoint(teacher_checkpoint)
    return _dense_student(encoder, teacher_checkpoint, teacher, state, seed)


def _dense_student(
    encoder: Union[SamViTConfig, TimmStudentSpec],
    teacher_checkpoint: PathLike,
    teacher: SamViTConfig,
    state: Dict[str, Any],
    seed: int,
) -> Tuple[Sam, SamViTConfig, Dict[str, Any]]:
    """:func:`dense_student` of a teacher already read (its config and state dict)."""
    if isinstance(encoder, BigLittleConfig):
        raise ValueError(f"{encoder.name} is big.LITTLE; a dense student has a plain encoder")
    if isinstance(encoder, TimmStudentSpec):
        fields = {k: getattr(encoder, k) for k in ("img_size", "patch_size", "out_chans")}
        _check_geometry(fields, teacher, f"timm student {encoder.name}")
        config = dataclasses.replace(teacher, name=encoder.name)
        record = encoder.record()
    else:
        _check_geometry({k: getattr(encoder, k) for k in _GEOMETRY}, teacher, encoder.name)
        config, record = encoder, {"kind": "vit"}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if isinstance(encoder, TimmStudentSpec):
            sam = timm_sam(config, encoder)
        else:
            sam = build_sam_from_config(config)
    heads = {k: v for k, v in state.items() if not k.startswith("image_encoder.")}
    load_state_dict_strict(
        sam, heads, teacher_checkpoint, config.name, allowed_missing=("image_encoder.",)
    )
    return sam.eval(), config, record


def write_dense_student(
    path: PathLike,
    encoder: Union[SamViTConfig, TimmStudentSpec],
    teacher_checkpoint: PathLike,
    seed: int = 0,
) -> Path:
    """Save :func:`dense_student` as the ``init_checkpoint`` of a ``student="dense"`` distillation
    (it records the teacher's tag and SHA-256, which the cache is checked against)."""
    teacher, state, _ = resolve_checkpoint(teacher_checkpoint)
    sam, config, record = _dense_student(encoder, teacher_checkpoint, teacher, state, seed)
    return save_model_checkpoint(
        path,
        sam,
        config,
        teacher=f"{teacher.name}:{Path(teacher_checkpoint).name}",
        teacher_sha256=file_sha256(teacher_checkpoint),
        note="a dense student before distillation",
        **{DENSE_KEY: record},
    )


def load_student(path: PathLike) -> Tuple[Sam, SamViTConfig, Dict[str, Any]]:
    """Any student checkpoint as a ``Sam`` in eval mode (strict load, ``weights_only=True``).

    A timm student is rebuilt from its ``dense_student`` record; anything else (a big.LITTLE or a
    dense ViT student, a plain SAM) goes through ``build_sam.load_sam``.

    Returns:
      The model, its config and the file's metadata.

    Raises:
      CheckpointError: unreadable, a bad record, or weights that do not fit the record.
    """
    state, meta = read_sam_checkpoint(path)
    if timm_record(meta) is None:
        config = resolve_loaded(state, meta, path)
        return sam_from_loaded(config, state, meta, path), config, meta
    sam, config = timm_student_from_loaded(state, meta, path)
    return sam, config, meta
