"""Building the models a training run starts from: a SAM from any checkpoint, and a big.LITTLE
student that inherits from its teacher.

Every check that can fail on user input (a checkpoint of another size, a student that does not fit
its teacher) runs here, before any data is read or any step is taken.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Tuple, Union

import torch
from segment_anything.modeling import Sam

from ..build_sam import build_sam_from_config, inherit_from_sam, load_sam, resolve_checkpoint
from ..checkpoint import CheckpointError, load_state_dict_strict
from ..config import (
    BIGLITTLE_CONFIGS,
    SAM_CONFIGS,
    BigLittleConfig,
    SamViTConfig,
    biglittle_config_for,
    get_config,
)
from ..modeling import old_layout_missing

__all__ = [
    "file_sha256",
    "load_sam",
    "student_config",
    "build_student",
    "build_model",
    "STUDENT_INITS",
]

PathLike = Union[str, os.PathLike]
STUDENT_INITS = ("teacher", "none")


def file_sha256(path: PathLike, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file, read in 4 MiB chunks (a few seconds for SAM ViT-H's 2.5 GB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def student_config(
    student: str, teacher: SamViTConfig, overrides: Optional[Mapping[str, Any]] = None
) -> BigLittleConfig:
    """The big.LITTLE config of ``student`` shaped like ``teacher``'s encoder.

    For a registered teacher size (``vit_b`` for ``bl_b``) this is the registered student. For a
    custom teacher (a wider ``vit_tiny``, say) the student takes the teacher's sizes, a LITTLE width
    of a quarter of C, and the registered student's E-block heads where they divide it.

    Raises:
      ValueError: ``student`` is not a big.LITTLE name, or inherits from another SAM size than
        ``teacher`` (``bl_b`` from a ViT-L checkpoint), naming the student that fits.
    """
    if student not in BIGLITTLE_CONFIGS:
        known = ", ".join(sorted(BIGLITTLE_CONFIGS))
        raise ValueError(f"unknown student {student!r}; expected a big.LITTLE model: {known}")
    base = BIGLITTLE_CONFIGS[student]
    overrides = dict(overrides or {})
    if isinstance(teacher, BigLittleConfig):
        raise ValueError(
            f"the teacher checkpoint is a big.LITTLE model ('{teacher.name}'); distil from a plain "
            "SAM (vit_b / vit_l / vit_h), or continue a student with its init checkpoint"
        )
    if teacher == SAM_CONFIGS[base.teacher]:
        return dataclasses.replace(base, **overrides) if overrides else base
    if teacher.name in SAM_CONFIGS and teacher == SAM_CONFIGS[teacher.name]:
        fits = [n for n, c in BIGLITTLE_CONFIGS.items() if c.teacher == teacher.name]
        raise ValueError(
            f"student {student} inherits from {base.teacher}, but the teacher checkpoint is "
            f"{teacher.name} (embed_dim {teacher.embed_dim}, depth {teacher.depth}); use "
            f"--student {fits[0] if fits else 'bl_<size>'} or a {base.teacher} checkpoint"
        )
    # A custom teacher size: the student takes its shape.
    little = int(overrides.pop("little_dim", max(8, teacher.embed_dim // 4)))
    default_heads = base.little_heads if little % base.little_heads == 0 else 1
    heads = int(overrides.pop("little_heads", default_heads))
    return biglittle_config_for(
        teacher, student, little_dim=little, little_heads=heads, **overrides
    )


def build_student(
    student: str,
    sam_checkpoint: PathLike,
    init: str = "teacher",
    overrides: Optional[Mapping[str, Any]] = None,
    seed: int = 0,
) -> Tuple[Sam, BigLittleConfig, str]:
    """A big.LITTLE student for distillation from the SAM in ``sam_checkpoint``.

    Arguments:
      student: ``bl_b``, ``bl_l``, ``bl_h`` or ``bl_tiny``.
      sam_checkpoint: the teacher SAM (official file, or a checkpoint of this project).
      init: ``teacher``: inherit patch / position embeddings, P-blocks, neck, prompt encoder and
        mask decoder (E-blocks start at gamma 0, routers fresh); ``none``: only the prompt encoder
        and mask decoder come from the file, the whole encoder starts random (an ablation).
      overrides: config fields (``little_dim``, ``keep_ratio``, ...).
      seed: seeds the weights the checkpoint does not provide.

    Returns:
      The student (eval mode), its config, and the teacher tag ``"<sam name>:<file name>"``.

    Raises:
      ValueError / CheckpointError: a student that does not fit the checkpoint, naming both.
    """
    if init not in STUDENT_INITS:
        raise ValueError(f"init must be one of {STUDENT_INITS}, got {init!r}")
    teacher_cfg, state, _ = resolve_checkpoint(sam_checkpoint)
    config = student_config(student, teacher_cfg, overrides)
    if config.training_free and not config.little_correction:  # nothing to train
        raise ValueError(
            f"student {student}: training_free=True has no E-blocks or routers to train; a "
            "training-free model needs no training (sam_model_registry[...](sam_checkpoint=...)); "
            "little_correction=True adds a learned correction to it"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sam = build_sam_from_config(config)
    tag = f"{teacher_cfg.name}:{Path(sam_checkpoint).name}"
    if init == "teacher":
        try:
            tag = inherit_from_sam(sam, sam_checkpoint, state)
        except CheckpointError as e:
            raise CheckpointError(
                f"{e}. The student {student} ({config.embed_dim} wide, {config.depth} blocks) must "
                "have the teacher's shape to inherit its blocks"
            ) from None
    else:
        heads = {k: v for k, v in state.items() if not k.startswith("image_encoder.")}
        load_state_dict_strict(
            sam, heads, sam_checkpoint, config.name, allowed_missing=("image_encoder.",)
        )
    sam.image_encoder.teacher = tag
    sam.eval()
    return sam, config, tag


def build_model(
    model: str,
    checkpoint: Optional[PathLike] = None,
    sam_checkpoint: Optional[PathLike] = None,
    overrides: Optional[Mapping[str, Any]] = None,
    seed: int = 0,
) -> Tuple[Sam, SamViTConfig, Optional[str]]:
    """Any registry model to train (fine-tuning): from a checkpoint, by inheritance, or fresh.

    Arguments:
      model: a registry name (``vit_b``, ``vit_tiny``, ``bl_b``, ...).
      checkpoint: a checkpoint of that model (official SAM file, or one of this project, which
        stores its config); None starts from ``sam_checkpoint`` or from fresh weights.
      sam_checkpoint: for a big.LITTLE model, an official SAM file to inherit from.
      overrides: config fields (sizes for a fresh ``vit_tiny`` / ``bl_*``; ``keep_ratio``...).
      seed: seeds every weight no file provides.

    Returns:
      The model (eval mode), its config and its teacher tag (None for plain SAM).
    """
    overrides = dict(overrides or {})
    if checkpoint is not None and sam_checkpoint is not None:
        raise ValueError("give checkpoint or sam_checkpoint, not both")
    if checkpoint is not None:
        config, state, meta = resolve_checkpoint(checkpoint, model)
        config = dataclasses.replace(config, **overrides) if overrides else config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            sam = build_sam_from_config(config)
        missing_ok = old_layout_missing(config, state)  # an old layout: context modules at init
        load_state_dict_strict(sam, state, checkpoint, config.name, missing_ok)
        teacher = meta.get("teacher") if isinstance(meta.get("teacher"), str) else None
        if isinstance(config, BigLittleConfig):
            sam.image_encoder.teacher = teacher or config.teacher
        return sam, config, teacher
    if sam_checkpoint is not None:
        if model not in BIGLITTLE_CONFIGS:
            raise ValueError(
                f"sam_checkpoint is for big.LITTLE models (inheriting from SAM); for {model} pass "
                "the file as checkpoint"
            )
        return build_student(model, sam_checkpoint, "teacher", overrides, seed)
    try:
        config = get_config("vit_h" if model == "default" else model)
    except KeyError as e:
        raise ValueError(str(e).strip("'\"")) from None
    config = dataclasses.replace(config, **overrides) if overrides else config
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sam = build_sam_from_config(config)
    return sam, config, None
