"""Checkpoint files between this project's layout (segment_anything's) and a transformers folder.

:func:`convert_to_hf` writes a folder that ``AutoModel.from_pretrained`` and
``pipeline("mask-generation", model=folder)`` load: ``config.json``, ``model.safetensors`` and the
``SamProcessor`` config sized for the model. :func:`convert_from_hf` writes the file back: an
official-layout state dict for a registered SAM size (what ``segment_anything`` loads), else this
project's checkpoint with its config. Only renames: a round trip is bit-exact.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Optional, Union

import torch
from segment_anything.modeling import Sam
from transformers import AutoConfig, SamImageProcessor, SamModel, SamProcessor

from ..build_sam import load_sam, sam_model_registry
from ..checkpoint import CheckpointError, PathLike, atomic_save, save_model_checkpoint
from ..config import SAM_CONFIGS, BigLittleConfig, SamViTConfig
from .configuration import BigLittleSamConfig, sam_config_from_hf, square_side
from .modeling import BigLittleSamModel, refuse_partial_load
from .swap import from_sam, to_sam

__all__ = ["convert_to_hf", "convert_from_hf", "from_checkpoint", "load_hf_folder", "processor_for"]


def processor_for(image_size: int) -> SamProcessor:
    """The ``SamProcessor`` of a model whose encoder takes ``image_size`` x ``image_size`` input
    (the longest side resized to it, padded to a square), with SAM's normalization."""
    return SamProcessor(
        image_processor=SamImageProcessor(
            size={"longest_edge": image_size},
            pad_size={"height": image_size, "width": image_size},
        )
    )


def _load_sam(checkpoint: PathLike, model: Optional[str], keep_ratio: Optional[float]) -> Sam:
    if model is None:
        sam, config, _ = load_sam(checkpoint)
        if keep_ratio is not None:
            if not isinstance(config, BigLittleConfig):
                raise ValueError(
                    f"{checkpoint}: holds plain SAM ({config.name}); a keep ratio needs a "
                    "big.LITTLE model: name one with --model (bl_b... for the training-free mode)"
                )
            sam.image_encoder.keep_ratio = keep_ratio
        return sam
    if model not in sam_model_registry:
        raise ValueError(f"unknown model {model!r}; expected one of {sorted(sam_model_registry)}")
    return sam_model_registry[model](checkpoint=checkpoint, keep_ratio=keep_ratio).eval()


def from_checkpoint(
    checkpoint: PathLike, model: Optional[str] = None, keep_ratio: Optional[float] = None
) -> Union[SamModel, BigLittleSamModel]:
    """A checkpoint of this project (or an official SAM file) as a transformers model, in memory.

    Arguments:
      checkpoint: a big.LITTLE checkpoint (distilled: the learned mode), or an official SAM file.
      model: registry name to build; ``bl_b`` with an official ``vit_b`` file gives the
        training-free mode; default: what the file holds (plain SAM gives a ``SamModel``).
      keep_ratio: the big.LITTLE model's keep ratio; default: the file's.
    """
    return from_sam(_load_sam(checkpoint, model, keep_ratio))


def _fresh_folder(output_dir: Path) -> None:
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise FileExistsError(
            f"{output_dir}: exists and is not an empty folder; give a new folder (nothing is "
            "overwritten)"
        )


def convert_to_hf(
    checkpoint: PathLike,
    output_dir: PathLike,
    model: Optional[str] = None,
    keep_ratio: Optional[float] = None,
) -> Path:
    """Write ``checkpoint`` (official SAM file or this project's checkpoint) as a transformers
    folder, then reload it strictly.

    Arguments:
      checkpoint: the file to convert.
      output_dir: a new (or empty) folder; written beside, then renamed into place.
      model: registry name to build (``bl_b`` with an official ``vit_b`` file gives the
        training-free mode); default: what the file holds.
      keep_ratio: the big.LITTLE model's keep ratio as saved; default: the file's.

    Returns:
      ``output_dir``.
    """
    target = Path(output_dir)
    _fresh_folder(target)
    hf = from_checkpoint(checkpoint, model, keep_ratio)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        hf.save_pretrained(staging)
        size = square_side(hf.config.vision_config.image_size, "image_size")
        processor_for(size).save_pretrained(staging)
        load_hf_folder(staging)  # the strict reload
        if target.exists():
            target.rmdir()  # empty, checked above
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def load_hf_folder(
    folder: PathLike, dtype: Optional[torch.dtype] = None
) -> Union[SamModel, BigLittleSamModel]:
    """A transformers SAM folder (``model_type`` ``sam`` or ``biglittle_sam``), loaded strictly:
    a missing, unexpected or misshapen weight is a ``CheckpointError`` naming it."""
    path = Path(folder)
    if not (path / "config.json").is_file():
        raise CheckpointError(
            f"{path}: not a transformers model folder (no config.json); expected what "
            "save_pretrained writes (config.json and model.safetensors)"
        )
    config = AutoConfig.from_pretrained(path)
    if isinstance(config, BigLittleSamConfig):
        return BigLittleSamModel.from_pretrained(path, dtype=dtype).eval()
    if getattr(config, "model_type", None) != "sam":
        raise CheckpointError(
            f"{path}: holds a {getattr(config, 'model_type', '?')!r} model; expected 'sam' or "
            "'biglittle_sam'"
        )
    model, info = SamModel.from_pretrained(path, dtype=dtype, output_loading_info=True)
    refuse_partial_load(info, path)
    return model.eval()


def convert_from_hf(hf_dir: PathLike, output: PathLike) -> Path:
    """Write a transformers SAM folder as a checkpoint of this project's (segment_anything's)
    layout, atomically, then reload it strictly.

    A plain SAM of a registered size (``vit_b``, ``vit_l``, ``vit_h``...) is written as official
    SAM files are (a bare state dict, which ``segment_anything.sam_model_registry`` loads); any
    other model with its config (``biglittle_sam.load_sam`` and the registry load it).
    """
    model = load_hf_folder(hf_dir)
    sam = to_sam(model)
    config: SamViTConfig = (
        sam.image_encoder.config
        if isinstance(model, BigLittleSamModel)
        else sam_config_from_hf(model.config)
    )
    if isinstance(config, BigLittleConfig):
        save_model_checkpoint(output, sam, config, teacher=sam.image_encoder.teacher)
    elif config.name in SAM_CONFIGS:
        atomic_save({k: v.detach().cpu() for k, v in sam.state_dict().items()}, output)
    else:
        save_model_checkpoint(output, sam, config)
    load_sam(Path(output))  # the strict reload
    return Path(output)
