"""What one evaluation run needs: :class:`EvalSettings`, its defaults (the only defaults: the
``biglittle-sam-eval`` flags are built from these fields and pass on only the flags given) and the
checks of :meth:`EvalSettings.resolved`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

from ..data.folder import ImageFolder
from ..model_spec import SPEC_FORM, model_spec_arg
from ..runtime.cli import flag
from .engine import PROMPT_KINDS, PromptSettings
from .predictor import MASK_CHOICES
from .prompts import PROTOCOLS
from .report import PLOT_X

__all__ = ["TASKS", "DATASETS", "AGREEMENT_PROMPTS", "EvalSettings", "output_name"]

TASKS = ("miou", "ap", "fidelity", "agreement")
AGREEMENT_PROMPTS = ("grid", "amg")
DATASETS = ("coco", "lvis", "sa1b", "folder")


def _spec_text(text: str) -> str:
    """A model spec flag checked at parse time (a bad one is a usage error showing the expected
    form), kept as the text the user wrote."""
    return model_spec_arg(text).text


@dataclass(frozen=True)
class EvalSettings:
    """Everything a run needs. These defaults are the only defaults (the CLI passes given flags)."""

    models: Tuple[str, ...] = flag(
        (),
        f"a model to evaluate, repeatable (at least one required): {SPEC_FORM}",
        name="--model",
        action="append",
        type=_spec_text,
        metavar="SPEC",
    )
    task: Optional[str] = flag(
        None,
        "what to measure (default: ap with --detections, fidelity with --teacher, agreement "
        "with --reference, else miou)",
        choices=TASKS,
    )
    dataset: Optional[str] = flag(
        None,
        "default: from --annotations (lvis if its name says so, else coco) or the SA-1B files",
        choices=DATASETS,
    )
    annotations: Optional[str] = flag(
        None, "COCO instances_*.json or LVIS json (SA-1B and folders have none)", metavar="JSON"
    )
    images: Optional[str] = flag(
        None,
        "image folder (COCO: val2017/; LVIS: the folder holding train2017/ and val2017/; "
        "SA-1B: the folder of sa_<id>.jpg + .json; fidelity, agreement: any image folder; "
        "required)",
        metavar="DIR",
    )
    detections: Optional[str] = flag(
        None, "COCO results json with boxes (task ap: mask AP)", metavar="JSON"
    )
    teacher: Optional[str] = flag(
        None, "teacher model spec for --task fidelity", type=_spec_text, metavar="SPEC"
    )
    reference: Optional[str] = flag(
        None,
        "task agreement: the model whose masks the --model masks are scored against",
        type=_spec_text,
        metavar="SPEC",
    )
    agreement_prompts: str = flag(
        "grid",
        "task agreement: grid (each point of a points-per-side grid is one click) or amg (the "
        "automatic mask generator's masks, each reference mask matched with its best)",
        choices=AGREEMENT_PROMPTS,
    )
    points_per_side: int = flag(
        16, "task agreement: points per side of the grid (both kinds; upstream's AMG uses 32)"
    )
    iou_match: float = flag(
        0.9, "task agreement: the IoU with the reference's mask that counts as a match"
    )
    pred_iou_thresh: float = flag(
        0.88, "task agreement, amg: the generator's predicted-IoU filter (upstream's value)"
    )
    stability_score_thresh: float = flag(
        0.95, "task agreement, amg: the generator's stability filter (upstream's value)"
    )
    prompts: Tuple[str, ...] = flag(
        PROMPT_KINDS,
        "prompt kinds (the published rows report both)",
        name="--prompt",
        choices=PROMPT_KINDS,
    )
    clicks: Tuple[int, ...] = flag((1, 3, 5), "click counts", metavar="K")
    protocol: str = flag(
        "evit",
        "evit (EfficientViT-SAM's): interior-most clicks, multimask best; edgesam: single mask, "
        "crowd dropped, seeded random refinement clicks",
        choices=PROTOCOLS,
    )
    mask_choice: Optional[str] = flag(
        None,
        "best: multimask and highest predicted IoU; single: single-mask output "
        "(default: the protocol's)",
        choices=MASK_CHOICES,
    )
    include_crowd: Optional[bool] = flag(
        None, "score crowd annotations (default: yes for evit, no for edgesam)"
    )
    min_area: float = 1.0  # skip (and count) annotations with a smaller area, as published
    sa1b_instances: Optional[int] = flag(
        None,
        "sample N instances per SA-1B image (EdgeSAM's SA-1K uses 64; default: all)",
        metavar="N",
    )
    image_list: Optional[str] = flag(
        None, "SA-1B held-out image names, one a line (default: every image)", metavar="TXT"
    )
    max_detections: int = 100  # boxes prompted per image (COCOeval's own cap)
    seed: int = flag(
        0, "seeds SA-1B instance sampling, EdgeSAM random clicks and weights a checkpoint lacks"
    )
    limit: Optional[int] = flag(None, "first N images only (default: all)", metavar="N")
    strict: bool = flag(
        False,
        "stop at the first missing, corrupt or mismatched image instead of skipping it and "
        "listing it in the output",
    )
    device: str = "auto"  # auto (CUDA when available), cpu, cuda or cuda:N
    threads: Optional[int] = flag(
        None,
        "torch CPU threads per process (torchrun workers default to 1; use --threads 1 for a "
        "single-process run that must match them bit for bit)",
    )
    out_dir: str = "outputs/eval"  # where the JSON, markdown and PNG go
    name: Optional[str] = None  # output file stem (default: <task>_<dataset>)
    plot_x: str = flag(
        "latency",
        "x axis of the plot: measured encoder ms (latency) or analytic GMACs",
        choices=PLOT_X,
    )
    progress: bool = True  # progress bar on rank 0
    save_masks: bool = False  # task ap: also write each model's COCO segm results json
    int8: bool = flag(
        False,
        "run every --model's image encoder in dynamic int8 (CPU only; the --teacher of task "
        "fidelity and the --reference of task agreement stay fp32, so the same spec as --teacher "
        "or --reference measures int8's error)",
    )

    def resolved(self) -> "EvalSettings":
        """A copy with ``task`` and ``dataset`` filled in; ValueError for combinations that
        cannot work, naming the flag that is missing."""
        task = self.task or self._default_task()
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        dataset = self.dataset
        if dataset is None:
            if task in ("fidelity", "agreement"):
                dataset = "folder"
            elif self.annotations:
                dataset = "lvis" if "lvis" in Path(self.annotations).name.lower() else "coco"
            elif self.images and any(Path(self.images).glob("sa_*.json")):
                dataset = "sa1b"
            else:
                raise ValueError(
                    "cannot tell which dataset to read: give --annotations (COCO / LVIS json) "
                    "with --images, or --images pointing at an SA-1B folder, or --dataset"
                )
        if dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
        if not self.images:
            raise ValueError(f"--images is needed (the {dataset} image folder)")
        if dataset in ("coco", "lvis") and not self.annotations:
            raise ValueError(f"--annotations is needed for {dataset} (the instance json)")
        if task == "ap":
            if dataset != "coco":
                raise ValueError(
                    f"mask AP is computed with pycocotools' COCOeval on COCO-format data; "
                    f"{dataset} is not supported (LVIS AP needs the lvis package's LVISEval)"
                )
            if not self.detections:
                raise ValueError("task 'ap' needs --detections (COCO results json with boxes)")
        if task == "fidelity" and not self.teacher:
            raise ValueError("task 'fidelity' needs --teacher NAME=CHECKPOINT")
        if task == "agreement":
            self._check_agreement()
        if task == "miou" and dataset == "folder":
            raise ValueError("task 'miou' needs annotations: use --dataset coco, lvis or sa1b")
        if dataset == "folder":
            ImageFolder(self.images)  # DatasetError naming the folder: missing, empty, unreadable
        if self.plot_x not in PLOT_X:
            raise ValueError(f"plot_x must be one of {PLOT_X}, got {self.plot_x!r}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")
        if self.int8 and self.device.startswith("cuda"):
            raise ValueError("--int8 runs on the CPU only: pass --device cpu")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        _ = self.prompt_settings  # ValueError for bad prompts, clicks, protocol or mask choice
        return dataclasses.replace(self, task=task, dataset=dataset)

    def _default_task(self) -> str:
        """The task the flags given imply: ap, fidelity or agreement by the input they name."""
        if self.detections:
            return "ap"
        if self.teacher:
            return "fidelity"
        return "agreement" if self.reference else "miou"

    def _check_agreement(self) -> None:
        """ValueError naming the flag of a task-agreement setting that cannot work."""
        if not self.reference:
            raise ValueError(
                f"task 'agreement' needs --reference (the model to compare with): {SPEC_FORM}"
            )
        if self.agreement_prompts not in AGREEMENT_PROMPTS:
            raise ValueError(
                f"--agreement-prompts must be one of {AGREEMENT_PROMPTS}, "
                f"got {self.agreement_prompts!r}"
            )
        if self.points_per_side < 1:
            raise ValueError(f"--points-per-side must be >= 1, got {self.points_per_side}")
        if not 0.0 < self.iou_match <= 1.0:
            raise ValueError(f"--iou-match must be in (0, 1], got {self.iou_match}")
        for name in ("pred_iou_thresh", "stability_score_thresh"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                flag_name = "--" + name.replace("_", "-")
                raise ValueError(f"{flag_name} must be in [0, 1], got {value}")

    @property
    def prompt_settings(self) -> PromptSettings:
        return PromptSettings(
            prompts=tuple(self.prompts),
            clicks=tuple(self.clicks),
            protocol=self.protocol,
            mask_choice=self.mask_choice,
            seed=self.seed,
        )

    @property
    def effective_include_crowd(self) -> bool:
        if self.include_crowd is not None:
            return bool(self.include_crowd)
        return self.protocol == "evit"


def output_name(settings: EvalSettings) -> str:
    """The output file stem of a resolved ``settings``: its name, or ``<task>_<dataset>``."""
    return settings.name or f"{settings.task}_{settings.dataset}"
