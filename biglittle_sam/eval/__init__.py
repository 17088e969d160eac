"""Mask evaluation: COCO / LVIS / SA-1B mIoU with box and click prompts, mask AP from detector
boxes, student-vs-teacher embedding fidelity, and agreement with a reference model's masks on any
image folder (no labels), for any model in the registry.

The protocol is described in ``eval/prompts.py`` (clicks) and ``eval/metrics.py`` (scores); a run
is configured by :class:`EvalSettings` and started with :func:`run_evaluation` (the
``biglittle-sam-eval`` command does exactly that).
"""

from ..fidelity import embedding_fidelity, valid_embedding_size
from ..runtime.distributed import DistContext, init_distributed, resolve_device
from .agreement import (
    AGREEMENT_PROMPTS,
    agreement_summary,
    best_match_ious,
    grid_points,
    iou_matrix,
    run_agreement,
)
from .engine import PromptSettings, evaluate_image
from .mask_ap import coco_mask_ap, load_detections, predict_detection_masks
from .metrics import AREA_BINS, area_bins, batch_iou, mask_iou, summarize_ious
from .models import (
    SPEC_FORM,
    EvalModel,
    ModelSpec,
    ModelSpecError,
    build_eval_models,
    parse_model_spec,
)
from .predictor import MaskPredictor, PromptBatch, SamMaskPredictor
from .prompts import (
    PROTOCOLS,
    Click,
    ClickSession,
    box_xywh_to_xyxy,
    distance_transform,
    edgesam_click,
    evit_click,
    instance_rng,
    interior_point,
)
from .report import markdown_table, plot_results, write_outputs
from .runner import (
    DATASETS,
    TASKS,
    EvalSettings,
    build_dataset,
    run_evaluation,
    run_fidelity,
    run_mask_ap,
    run_miou,
)

__all__ = [
    "AGREEMENT_PROMPTS",
    "AREA_BINS",
    "DATASETS",
    "PROTOCOLS",
    "SPEC_FORM",
    "TASKS",
    "Click",
    "ClickSession",
    "DistContext",
    "EvalModel",
    "EvalSettings",
    "MaskPredictor",
    "ModelSpec",
    "ModelSpecError",
    "PromptBatch",
    "PromptSettings",
    "SamMaskPredictor",
    "agreement_summary",
    "area_bins",
    "best_match_ious",
    "batch_iou",
    "box_xywh_to_xyxy",
    "build_dataset",
    "build_eval_models",
    "coco_mask_ap",
    "distance_transform",
    "edgesam_click",
    "embedding_fidelity",
    "evaluate_image",
    "evit_click",
    "grid_points",
    "init_distributed",
    "instance_rng",
    "interior_point",
    "iou_matrix",
    "load_detections",
    "markdown_table",
    "mask_iou",
    "parse_model_spec",
    "plot_results",
    "predict_detection_masks",
    "resolve_device",
    "run_agreement",
    "run_evaluation",
    "run_fidelity",
    "run_mask_ap",
    "run_miou",
    "summarize_ious",
    "valid_embedding_size",
    "write_outputs",
]
