"""Training: the one loop that distillation and fine-tuning share, and fine-tuning itself.

- :func:`run_training` (``loop.py``): AdamW, warm-up + cosine, accumulation, clipping, bf16
  autocast on CUDA, DDP under torchrun, atomic checkpoints, exact resume, JSONL / TensorBoard
  metrics, a progress bar and a loss plot.
- :func:`run_finetune` (``finetune.py``): SAM's focal + Dice + IoU-head losses on COCO / SA-1B
  masks, with box and point prompts and refinement clicks, for any registry model.

Distillation lives in ``biglittle_sam.distill`` and trains through the same loop.
"""

from .data import (
    StreamSampler,
    TrainImages,
    build_image_source,
    collate_items,
    image_key,
    instance_targets,
    preprocess_image,
    source_file_names,
)
from .finetune import FinetuneModule, FinetuneSettings, build_finetune_task, run_finetune
from .loop import TrainResult, TrainTask, resolve_resume, run_training
from .losses import bce_loss, dice_loss, mask_iou, sigmoid_focal_loss
from .models import build_model, build_student, file_sha256, load_sam, student_config
from .parts import PARTS, parse_parts, select_trainable, trainable_summary
from .settings import TrainSettings, fingerprint_settings, keep_ratio_for_step, settings_to_dict
from .state import check_resume_compatible, load_training_checkpoint

__all__ = [
    "PARTS",
    "FinetuneModule",
    "FinetuneSettings",
    "StreamSampler",
    "TrainImages",
    "TrainResult",
    "TrainSettings",
    "TrainTask",
    "bce_loss",
    "build_finetune_task",
    "build_image_source",
    "build_model",
    "build_student",
    "check_resume_compatible",
    "collate_items",
    "dice_loss",
    "file_sha256",
    "fingerprint_settings",
    "image_key",
    "instance_targets",
    "keep_ratio_for_step",
    "load_sam",
    "load_training_checkpoint",
    "mask_iou",
    "parse_parts",
    "preprocess_image",
    "resolve_resume",
    "run_finetune",
    "run_training",
    "select_trainable",
    "settings_to_dict",
    "sigmoid_focal_loss",
    "source_file_names",
    "student_config",
    "trainable_summary",
]
