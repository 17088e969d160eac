"""Agreement with a reference model on any folder of images, without labels (task ``agreement``).

The user's own check of a fast setting on their photos: for example a big.LITTLE or
training-free checkpoint at keep ratio 0.5 against the same checkpoint at 1, or ``--int8``
against fp32 (the reference always runs in fp32). The reference's masks stand in for ground
truth; a model that agrees with it everywhere scores mIoU 100 and a share of 1.

Two kinds of prompts (``EvalSettings.agreement_prompts``):

- ``grid``: an N x N grid of points over the image (N = ``points_per_side``, placed as
  ``SamAutomaticMaskGenerator`` places them). Each point is one positive click; each model's mask
  for it is the multimask output with the highest predicted IoU (as SAM's AMG picks), scored by
  IoU against the reference's mask for the same point. Points whose reference mask is empty are
  skipped and counted (``dataset.reference_empty``).
- ``amg``: every model runs the automatic mask generator
  (:class:`~biglittle_sam.mask_generator.FastAutomaticMaskGenerator`, upstream's masks, with
  ``points_per_side``, ``pred_iou_thresh`` and ``stability_score_thresh`` as set and upstream's
  other defaults). Each reference mask is matched with the model's mask of the highest IoU (0 when
  the model has none). Both mask counts are reported.

Per model: mIoU over the reference masks (IoU x 100, a plain mean), the share of masks with
IoU >= ``iou_match`` (0.9 by default), both by the reference mask's area in pixels in the size
bins of ``eval/metrics.py`` (small / medium / large at 32^2 and 96^2).

Every image is read once and every model (the reference included) encodes it once; the prompts
all reuse that embedding, and the images are sharded under ``torchrun`` as in the other tasks.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np
from segment_anything.predictor import SamPredictor
from segment_anything.utils.amg import build_point_grid

from ..data.records import EvalDataset, ImageRecord
from ..mask_generator import FastAutomaticMaskGenerator
from ..runtime.distributed import DistContext
from .loop import Work, dataset_summary, encoder_ms, run_images
from .metrics import batch_iou, bin_masks, summarize_ious
from .models import EvalModel
from .predictor import PromptBatch, SamMaskPredictor
from .settings import AGREEMENT_PROMPTS, EvalSettings

__all__ = [
    "AGREEMENT_PROMPTS",
    "agreement_summary",
    "best_match_ious",
    "grid_points",
    "iou_matrix",
    "run_agreement",
]

# Masks of one prompt chunk (chunk x H x W bools) stay under this many values per model: 32 Mi.
_MAX_MASK_PIXELS = 1 << 25


def grid_points(height: int, width: int, points_per_side: int) -> np.ndarray:
    """The N x N point grid of ``SamAutomaticMaskGenerator`` on an image of ``height`` x ``width``.

    Returns:
      (N * N) x 2 float (x, y) pixel coordinates, cell centres, row by row.
    """
    if points_per_side < 1:
        raise ValueError(f"points_per_side must be >= 1, got {points_per_side}")
    return build_point_grid(points_per_side) * np.array([[width, height]], dtype=np.float64)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every pair of masks from two stacks.

    Arguments:
      a: R x H x W bool.
      b: M x H x W bool.

    Returns:
      R x M float64 in [0, 1] (0 where both masks are empty).
    """
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"mask sizes differ: {a.shape[1:]} and {b.shape[1:]}")
    r, m = a.shape[0], b.shape[0]
    if r == 0 or m == 0:
        return np.zeros((r, m), dtype=np.float64)
    fa, fb = a.reshape(r, -1), b.reshape(m, -1)  # R x HW, M x HW
    inter = np.zeros((r, m), dtype=np.int64)
    # Pixel blocks: float32 sums of 0/1 are exact below 2^24, and a block of both stacks stays
    # near 256 MiB however large the photo.
    block = int(min(1 << 22, max(1 << 12, (1 << 26) // (r + m))))
    for start in range(0, fa.shape[1], block):
        pa = fa[:, start : start + block].astype(np.float32)  # R x blk
        pb = fb[:, start : start + block].astype(np.float32)  # M x blk
        inter += np.rint(pa @ pb.T).astype(np.int64)  # R x M
    union = fa.sum(axis=1)[:, None] + fb.sum(axis=1)[None, :] - inter  # R x M
    out = np.zeros((r, m), dtype=np.float64)
    np.divide(inter, union, out=out, where=union > 0)
    return out


def best_match_ious(reference: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """For each reference mask, the IoU of the model mask that overlaps it best.

    Arguments:
      reference: R x H x W bool.
      masks: M x H x W bool (M may be 0).

    Returns:
      (R,) float64; 0 for every reference mask when the model has no mask.
    """
    if masks.shape[0] == 0:
        return np.zeros(reference.shape[0], dtype=np.float64)
    return iou_matrix(reference, masks).max(axis=1)


def agreement_summary(ious: np.ndarray, areas: np.ndarray, iou_match: float) -> Dict[str, Any]:
    """mIoU and the share of good matches, over all masks and by size bin.

    Arguments:
      ious: (N,) IoU in [0, 1] of each reference mask with the model's.
      areas: (N,) reference mask areas in pixels.
      iou_match: the IoU a match must reach to count in ``share``.

    Returns:
      ``{"miou": {all, small, medium, large, count} (x 100), "share": {bin: share or None}}``.
    """
    ious = np.asarray(ious, dtype=np.float64)
    share: Dict[str, Optional[float]] = {}
    for name, member in bin_masks(np.asarray(areas)).items():
        share[name] = float(np.mean(ious[member] >= iou_match)) if member.any() else None
    return {"miou": summarize_ious(ious * 100.0, areas), "share": share}


class _EncodedImage:
    """A ``SamPredictor`` stand-in for the mask generator on an image its predictor has already
    encoded (once, at the model's keep ratio): ``set_image`` of that image and ``reset_image`` do
    nothing; everything else is the wrapped predictor's."""

    def __init__(self, predictor: SamPredictor) -> None:
        self._predictor = predictor

    def __getattr__(self, name: str) -> Any:
        return getattr(self._predictor, name)

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        if tuple(image.shape[:2]) != tuple(self._predictor.original_size):
            raise RuntimeError("the mask generator asked for a crop; agreement uses the full image")

    def reset_image(self) -> None:
        pass


def _sam_predictor(model: EvalModel) -> SamMaskPredictor:
    if not isinstance(model.predictor, SamMaskPredictor):
        raise TypeError(f"the agreement task needs SAM models; {model.label} is not one")
    return model.predictor


def _generator(model: EvalModel, settings: EvalSettings) -> FastAutomaticMaskGenerator:
    """A mask generator that reuses ``model``'s encoding of the current image."""
    predictor = _sam_predictor(model)
    generator = FastAutomaticMaskGenerator(
        predictor.sam,
        points_per_side=settings.points_per_side,
        pred_iou_thresh=settings.pred_iou_thresh,
        stability_score_thresh=settings.stability_score_thresh,
        output_mode="binary_mask",
    )
    generator.predictor = _EncodedImage(predictor.predictor)  # type: ignore[assignment]
    return generator


def _generated_masks(generator: FastAutomaticMaskGenerator, image: np.ndarray) -> np.ndarray:
    """The generator's masks on ``image`` (H x W x 3) as M x H x W bool (M may be 0)."""
    records = generator.generate(image)
    if not records:
        return np.zeros((0, *image.shape[:2]), dtype=bool)
    return np.stack([np.asarray(r["segmentation"], dtype=bool) for r in records])


def _grid_scores(
    image: np.ndarray, reference: EvalModel, models: List[EvalModel], points_per_side: int
) -> Dict[str, Any]:
    """One image's grid scores: reference mask areas, IoU per model, and the skipped points."""
    h, w = image.shape[:2]
    coords = grid_points(h, w, points_per_side)  # P x 2 (x, y)
    chunk = max(1, _MAX_MASK_PIXELS // (h * w))
    areas: List[int] = []
    ious: Dict[str, List[float]] = {m.label: [] for m in models}
    empty = 0
    for start in range(0, len(coords), chunk):
        pts = coords[start : start + chunk]
        batch = PromptBatch(
            image_id=None,
            ann_ids=list(range(start, start + len(pts))),
            point_coords=pts[:, None, :],  # b x 1 x 2
            point_labels=np.ones((len(pts), 1), dtype=np.int64),  # b x 1, one positive click
        )
        ref_masks, _ = reference.predictor.predict(batch, "best")  # b x H x W
        ref_area = ref_masks.reshape(len(pts), -1).sum(axis=1)  # (b,)
        keep = ref_area > 0
        empty += int((~keep).sum())
        areas += ref_area[keep].tolist()
        for m in models:
            masks, _ = m.predictor.predict(batch, "best")  # b x H x W
            ious[m.label] += batch_iou(masks[keep], ref_masks[keep]).tolist()
    return {"areas": areas, "ious": ious, "reference_empty": empty, "points": len(coords)}


def _amg_scores(
    image: np.ndarray,
    reference: FastAutomaticMaskGenerator,
    generators: Dict[str, FastAutomaticMaskGenerator],
) -> Dict[str, Any]:
    """One image's AMG scores: reference mask areas, best-match IoU and mask count per model."""
    ref_masks = _generated_masks(reference, image)  # R x H x W
    ref_area = ref_masks.sum(axis=(1, 2))  # (R,); R may be 0 (reshape(0, -1) cannot infer)
    keep = ref_area > 0
    ref_masks = ref_masks[keep]  # R' x H x W
    ious: Dict[str, List[float]] = {}
    counts: Dict[str, int] = {}
    for label, generator in generators.items():
        masks = _generated_masks(generator, image)  # M x H x W
        counts[label] = int(masks.shape[0])
        ious[label] = best_match_ious(ref_masks, masks).tolist()
    return {
        "areas": ref_area[keep].tolist(),
        "ious": ious,
        "masks": counts,
        "reference_masks": int(keep.sum()),
        "reference_empty": int((~keep).sum()),
    }


def _work(settings: EvalSettings, reference: EvalModel, models: List[EvalModel]) -> Work:
    """The per-image work of the task: encode with every model once, then score the prompts."""
    amg = settings.agreement_prompts == "amg"
    generators = {m.label: _generator(m, settings) for m in models} if amg else {}
    ref_generator = _generator(reference, settings) if amg else None

    def work(record: ImageRecord, image: np.ndarray) -> Dict[str, Any]:
        enc_s = {m.label: m.predictor.set_image(image) for m in [reference, *models]}
        if ref_generator is not None:
            scores = _amg_scores(image, ref_generator, generators)
        else:
            scores = _grid_scores(image, reference, models, settings.points_per_side)
        return {"enc_s": enc_s, "agreement": scores}

    return work


def _totals(done: List[Dict[str, Any]], key: str) -> int:
    return int(sum(it["agreement"].get(key, 0) for it in done))


def run_agreement(
    settings: EvalSettings,
    dataset: EvalDataset,
    models: List[EvalModel],
    ctx: DistContext,
    reference: EvalModel,
) -> Optional[Dict[str, Any]]:
    """Every model's masks against ``reference``'s on this rank's images, gathered on rank 0.

    Returns:
      On rank 0: ``dataset`` summary (with ``reference_masks`` scored and ``reference_empty``
      skipped, and ``points`` for the grid), ``reference`` and ``models`` rows (with
      ``agreement``: ``miou`` x 100 and ``share`` by size bin, and ``masks`` for amg), the
      ``masks`` table (``image_id`` and ``area`` of each scored reference mask) and per-mask
      ``ious`` (x 100) per model, in dataset order. None on other ranks.

    Raises:
      ValueError: the prompt kind is not one of :data:`AGREEMENT_PROMPTS`.
    """
    if settings.agreement_prompts not in AGREEMENT_PROMPTS:
        raise ValueError(
            f"agreement prompts must be one of {AGREEMENT_PROMPTS}, "
            f"got {settings.agreement_prompts!r}"
        )
    for m in [reference, *models]:
        _sam_predictor(m)
    work = _work(settings, reference, models)
    items = run_images(dataset, ctx, settings, work, lambda r: True, "agreement")
    if items is None:
        return None
    done = [it for it in items if it["evaluated"]]
    table: Dict[str, List[Any]] = {"image_id": [], "area": []}
    for it in done:
        table["image_id"] += [it["image_id"]] * len(it["agreement"]["areas"])
        table["area"] += it["agreement"]["areas"]
    amg = settings.agreement_prompts == "amg"
    rows, ious = [], {}
    for m in models:
        raw = np.array([v for it in done for v in it["agreement"]["ious"][m.label]])
        ious[m.label] = (raw * 100.0).tolist()
        scores = agreement_summary(raw, np.array(table["area"]), settings.iou_match)
        if amg:
            scores["masks"] = int(sum(it["agreement"]["masks"][m.label] for it in done))
        rows.append({**m.describe(), "encoder_ms": encoder_ms(items, m.label), "agreement": scores})
    summary = dataset_summary(dataset, items)
    summary["reference_masks"] = len(table["area"])
    summary["reference_empty"] = _totals(done, "reference_empty")
    if not amg:
        summary["points"] = _totals(done, "points")
    return {
        "dataset": summary,
        "settings_extra": {},
        "reference": {**reference.describe(), "encoder_ms": encoder_ms(items, reference.label)},
        "models": rows,
        "masks": table,
        "ious": ious,
    }
