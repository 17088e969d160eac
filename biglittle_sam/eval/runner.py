"""One evaluation run: settings in, results (JSON, markdown, PNG) out.

Four tasks share one loop over images: each image is read once, each model encodes it once, and
every prompt of every setting reuses that embedding.

- ``miou``: box and click prompts from ground truth on COCO, LVIS or SA-1B; per-instance IoU and
  mIoU by object size.
- ``ap``: box prompts from a detections file; COCO mask AP.
- ``fidelity``: student vs teacher embeddings on an image folder; MSE and cosine similarity.
- ``agreement``: masks vs a reference model's masks on any image folder, no labels (a point grid
  or the automatic mask generator as prompts); mIoU and the share of masks with IoU >= 0.9.

Under ``torchrun`` the images are sharded over the processes and the results gathered on rank 0,
which alone writes the outputs; the numbers are those of a single-process run. On CPU that holds
bit for bit when every process uses the same number of threads (torchrun gives each worker
OMP_NUM_THREADS=1; pass ``threads=1`` / ``--threads 1`` to the single-process run), because
matrix products sum in a thread-dependent order.

The parts: :class:`EvalSettings` and its checks in ``eval/settings.py``, the dataset and the shared
image loop in ``eval/loop.py``, three tasks in ``eval/tasks.py`` and the agreement task in
``eval/agreement.py``; this module runs one task and writes the result.

    from biglittle_sam.eval import EvalSettings, run_evaluation
    result = run_evaluation(EvalSettings(
        annotations="instances_val2017.json", images="val2017",
        models=("vit_b=sam_vit_b_01ec64.pth", "bl_b=bl_b.pth@0.25")))
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from ..runtime.distributed import init_distributed
from .agreement import run_agreement
from .loop import build_dataset, given_value, warn_annotation_issues
from .models import build_eval_models
from .report import write_outputs
from .settings import DATASETS, TASKS, EvalSettings, output_name
from .tasks import run_fidelity, run_mask_ap, run_miou

__all__ = [
    "TASKS",
    "DATASETS",
    "EvalSettings",
    "build_dataset",
    "run_evaluation",
    "run_miou",
    "run_mask_ap",
    "run_fidelity",
    "run_agreement",
]

FORMAT_NAME = "biglittle-sam-eval"
FORMAT_VERSION = 1


def run_evaluation(settings: EvalSettings) -> Optional[Dict[str, Any]]:
    """Run one evaluation and write its outputs.

    Returns:
      On rank 0, the result dict (also written as ``<out_dir>/<name>.json`` with ``.md`` and
      ``.png`` next to it); on other ranks, None.

    Raises:
      ValueError (including DatasetError, ModelSpecError, CheckpointError): for input a user can
      fix; the message names the file or flag and the expected form.
    """
    s = settings.resolved()
    if s.threads is not None:
        torch.set_num_threads(s.threads)
    ctx, device = init_distributed(s.device)
    try:
        start = time.perf_counter()
        dataset = build_dataset(s)
        models = build_eval_models(s.models, device, s.seed, s.int8)
        if s.task == "miou":
            partial = run_miou(s, dataset, models, ctx)
        elif s.task == "ap":
            partial = run_mask_ap(s, dataset, models, ctx)
        elif s.task == "agreement":
            reference_spec = given_value(s.reference, "--reference")
            reference = build_eval_models([reference_spec], device, s.seed)[0]
            reference.label = f"reference {reference.label}"
            partial = run_agreement(s, dataset, models, ctx, reference)
        else:
            teacher_spec = given_value(s.teacher, "--teacher")
            teacher = build_eval_models([teacher_spec], device, s.seed)[0]
            teacher.label = f"teacher {teacher.label}"
            partial = run_fidelity(s, dataset, models, ctx, teacher)
        if partial is None:
            return None
        warn_annotation_issues(partial["dataset"])
        wall = time.perf_counter() - start
        evaluated = partial["dataset"]["images_evaluated"]
        settings_out = {
            k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(s).items()
        }
        settings_out.update(partial.pop("settings_extra"))
        result: Dict[str, Any] = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "task": s.task,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "settings": settings_out,
            "run": {
                "device": str(device),
                "world_size": ctx.world_size,
                "backend": ctx.backend,
                "torch": torch.__version__,
                "wall_s": wall,
                "images_per_s": evaluated / wall if wall > 0 else None,
            },
            **partial,
        }
        write_outputs(result, Path(s.out_dir), output_name(s), s.plot_x)
        return result
    finally:
        ctx.close()
