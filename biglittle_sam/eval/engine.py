"""Scoring one image: every instance, every prompt setting, for one model.

Box prompts are batched over the image's instances. Click prompts run round by round: in round k
every instance that still has an error gets its k-th click and all its clicks are fed again,
without the previous mask; IoU is recorded after the rounds listed in ``clicks``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ..data.records import ImageRecord
from .metrics import batch_iou
from .predictor import MASK_CHOICES, MaskPredictor, PromptBatch
from .prompts import PROTOCOLS, ClickSession, box_xywh_to_xyxy, instance_rng

__all__ = ["PROMPT_KINDS", "PromptSettings", "evaluate_image"]

PROMPT_KINDS = ("box", "click")


@dataclass(frozen=True)
class PromptSettings:
    """Which prompts to score and how (see ``eval/prompts.py`` for the two protocols)."""

    prompts: Tuple[str, ...] = ("box", "click")  # the published table has both
    clicks: Tuple[int, ...] = (1, 3, 5)  # the click counts the published tables report
    protocol: str = "evit"  # EfficientViT-SAM's protocol; "edgesam" is the alternative
    mask_choice: Optional[str] = (
        None  # None: the protocol's ("best" for evit, "single" for edgesam)
    )
    seed: int = 0  # with image and annotation id, seeds the edgesam protocol's random clicks

    def __post_init__(self) -> None:
        bad = [p for p in self.prompts if p not in PROMPT_KINDS]
        if bad or not self.prompts:
            raise ValueError(
                f"prompts must be a non-empty subset of {PROMPT_KINDS}, got {self.prompts}"
            )
        if "click" in self.prompts:
            if not self.clicks or any(int(k) != k or k < 1 for k in self.clicks):
                raise ValueError(f"clicks must be positive integers, got {self.clicks}")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if self.mask_choice is not None and self.mask_choice not in MASK_CHOICES:
            raise ValueError(f"mask_choice must be one of {MASK_CHOICES}, got {self.mask_choice!r}")
        object.__setattr__(self, "prompts", tuple(p for p in PROMPT_KINDS if p in self.prompts))
        object.__setattr__(self, "clicks", tuple(sorted({int(k) for k in self.clicks})))

    @property
    def effective_mask_choice(self) -> str:
        if self.mask_choice is not None:
            return self.mask_choice
        return "best" if self.protocol == "evit" else "single"

    @property
    def setting_names(self) -> List[str]:
        """Result columns: ``box`` and ``click<k>`` for each k in ``clicks``."""
        names = ["box"] if "box" in self.prompts else []
        if "click" in self.prompts:
            names += [f"click{k}" for k in self.clicks]
        return names

    def describe(self) -> Dict[str, Any]:
        return {
            "prompts": list(self.prompts),
            "clicks": list(self.clicks) if "click" in self.prompts else [],
            "protocol": self.protocol,
            "mask_choice": self.effective_mask_choice,
            "seed": self.seed,
        }


def evaluate_image(
    predictor: MaskPredictor,
    record: ImageRecord,
    settings: PromptSettings,
    max_gt_pixels: int = 1 << 26,
) -> Dict[str, np.ndarray]:
    """Per-instance IoU x 100 of one model on one image, for every prompt setting.

    The image must already be set on ``predictor``. Instances are processed in chunks whose
    ground-truth masks (chunk x H x W) stay under ``max_gt_pixels``; the chunks depend only on the
    image, so results do not depend on how images are spread over processes.

    Returns:
      ``{setting: (N,) float64}`` for the record's N instances, in record order.
    """
    n = len(record.instances)
    out = {name: np.zeros(n, dtype=np.float64) for name in settings.setting_names}
    if n == 0:
        return out
    chunk = max(1, max_gt_pixels // max(1, record.height * record.width))
    choice = settings.effective_mask_choice
    for start in range(0, n, chunk):
        instances = record.instances[start : start + chunk]
        sl = slice(start, start + len(instances))
        gts = np.stack([inst.mask() for inst in instances])  # (b, H, W)
        ann_ids = [inst.ann_id for inst in instances]
        if "box" in settings.prompts:
            boxes = np.stack([box_xywh_to_xyxy(inst.bbox) for inst in instances])  # (b, 4)
            batch = PromptBatch(record.image_id, ann_ids, boxes=boxes)
            masks, _ = predictor.predict(batch, choice)
            out["box"][sl] = batch_iou(masks, gts) * 100.0
        if "click" in settings.prompts:
            for k, ious in _click_rounds(predictor, record.image_id, ann_ids, gts, settings):
                out[f"click{k}"][sl] = ious
    return out


def _click_rounds(
    predictor: MaskPredictor,
    image_id: Any,
    ann_ids: List[Any],
    gts: np.ndarray,
    settings: PromptSettings,
) -> List[Tuple[int, np.ndarray]]:
    """Run max(clicks) rounds on b instances; return (k, (b,) IoU x 100) after each listed round."""
    choice = settings.effective_mask_choice
    sessions = [
        ClickSession(
            gt,
            settings.protocol,
            instance_rng(settings.seed, image_id, a) if settings.protocol == "edgesam" else None,
        )
        for gt, a in zip(gts, ann_ids)
    ]
    preds = np.zeros_like(gts)  # (b, H, W); empty until an instance gets its first click
    results = []
    for k in range(1, settings.clicks[-1] + 1):
        moved = [i for i, s in enumerate(sessions) if s.add_click(preds[i] if k > 1 else None)]
        by_count: Dict[int, List[int]] = {}
        for i in moved:
            by_count.setdefault(len(sessions[i].clicks), []).append(i)
        for idx in by_count.values():
            batch = PromptBatch(
                image_id,
                [ann_ids[i] for i in idx],
                point_coords=np.stack([sessions[i].coords for i in idx]),  # (m, K, 2)
                point_labels=np.stack([sessions[i].labels for i in idx]),  # (m, K)
            )
            masks, _ = predictor.predict(batch, choice)
            preds[idx] = masks
        if k in settings.clicks:
            results.append((k, batch_iou(preds, gts) * 100.0))
    return results
