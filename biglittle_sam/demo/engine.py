"""Encode once, decode per click: the compute behind the demo.

:func:`encode_image` runs the image encoder (the expensive part) and returns an
:class:`EncodedImage` that a session caches; :func:`decode_prompts` runs only the prompt encoder and
mask decoder on it, and :func:`segment_everything` runs
:class:`~biglittle_sam.mask_generator.FastAutomaticMaskGenerator` (``SamAutomaticMaskGenerator``'s
masks, a cheaper point loop) on the cached features.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything import SamPredictor
from segment_anything.utils.transforms import ResizeLongestSide

from ..mask_generator import FastAutomaticMaskGenerator
from .models import DemoModel

__all__ = [
    "EncodedImage",
    "Prediction",
    "decode_prompts",
    "encode_image",
    "mask_iou",
    "segment_everything",
]

ProgressFn = Callable[[float, str], None]


@dataclass
class EncodedImage:
    """Image features of one image under one model and keep ratio.

    Attributes:
      features: 1 x C x g x g image embedding, on the model's device.
      original_size: (H, W) of the encoded image.
      input_size: (h, w) after ResizeLongestSide, before padding to ``img_size``.
      keep_ratio: the ratio the encoder ran at (1.0 for plain SAM).
      seconds: wall time of the encoder pass.
      usage_grid: rows x cols float32 in [0, 1], the share of layers in which each token that
        covers the image took the big path; None for plain SAM. Kept at token resolution (a few KB)
        and drawn at any size by :meth:`usage_at`.
      patch: pixels per token side at the encoder's input.
    """

    features: torch.Tensor
    original_size: Tuple[int, int]
    input_size: Tuple[int, int]
    keep_ratio: float
    seconds: float
    usage_grid: Optional[np.ndarray] = None
    patch: int = 16

    def usage_at(self, size: Tuple[int, int]) -> np.ndarray:
        """The usage map laid over the image at ``size`` (H', W'): float32 in [0, 1]."""
        if self.usage_grid is None:
            raise ValueError("plain SAM has no usage map: every token takes every block")
        rows, cols = self.usage_grid.shape
        grid = torch.from_numpy(self.usage_grid)[None, None]  # (1, 1, rows, cols)
        # The tokens cover rows * patch >= h pixels: resize to that, then cut the padding off.
        covered = F.interpolate(grid, size=(rows * self.patch, cols * self.patch), mode="nearest")
        covered = covered[:, :, : self.input_size[0], : self.input_size[1]]
        full = F.interpolate(covered, size=tuple(size), mode="bilinear", align_corners=False)
        return full[0, 0].clamp(0, 1).numpy().astype(np.float32)

    @property
    def usage(self) -> Optional[np.ndarray]:
        """The usage map at the image's size (H x W float32), or None for plain SAM."""
        return None if self.usage_grid is None else self.usage_at(self.original_size)


@dataclass
class Prediction:
    """Masks for one prompt set.

    Attributes:
      masks: K x H x W bool (K = 3 with multimask output, else 1).
      scores: K predicted IoUs.
      seconds: wall time of prompt encoder + mask decoder + upsampling.
    """

    masks: np.ndarray
    scores: np.ndarray
    seconds: float


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _usage_grid(usage: torch.Tensor, input_size: Tuple[int, int], patch: int) -> np.ndarray:
    """Crop the g x g usage grid to the rows x cols tokens that cover the image."""
    rows = max(1, math.ceil(input_size[0] / patch))
    cols = max(1, math.ceil(input_size[1] / patch))
    return usage[:rows, :cols].float().cpu().numpy().astype(np.float32)  # (rows, cols)


def encode_image(model: DemoModel, image: np.ndarray, keep_ratio: float) -> EncodedImage:
    """Run the image encoder on an H x W x 3 uint8 RGB image.

    The encoder runs this call at ``keep_ratio`` without changing the shared model's ratio, so
    sessions encoding at different ratios cannot see each other's setting, and no lock is
    needed: two sessions encode at the same time (the page's queue bounds how many at once).
    """
    sam = model.sam
    device = model.device
    transform = ResizeLongestSide(sam.image_encoder.img_size)
    resized = transform.apply_image(image)
    x = torch.as_tensor(resized, device=device).permute(2, 0, 1).contiguous()[None]  # 1x3xhxw
    input_size = (int(x.shape[-2]), int(x.shape[-1]))
    usage: Optional[np.ndarray] = None
    patch = 16
    ratio = 1.0
    with torch.inference_mode():
        x = sam.preprocess(x)  # normalise and pad to 1 x 3 x S x S
        _sync(device)
        start = time.perf_counter()
        if model.is_biglittle:
            ratio = float(keep_ratio)
            features, aux = sam.image_encoder.forward_with_aux(x, keep_ratio=ratio)
            _sync(device)
            seconds = time.perf_counter() - start
            patch = model.config.patch_size
            usage = _usage_grid(aux.usage()[0], input_size, patch)
        else:
            features = sam.image_encoder(x)
            _sync(device)
            seconds = time.perf_counter() - start
    return EncodedImage(
        features, (image.shape[0], image.shape[1]), input_size, ratio, seconds, usage, patch
    )


def _predictor(model: DemoModel, encoded: EncodedImage) -> SamPredictor:
    """A ``SamPredictor`` primed with cached features (no encoder pass)."""
    predictor = SamPredictor(model.sam)
    predictor.features = encoded.features
    predictor.original_size = encoded.original_size
    predictor.input_size = encoded.input_size
    predictor.is_image_set = True
    return predictor


def decode_prompts(
    model: DemoModel,
    encoded: EncodedImage,
    points: Optional[np.ndarray],
    labels: Optional[np.ndarray],
    box: Optional[np.ndarray],
    multimask: bool,
) -> Prediction:
    """Masks for point prompts (N x 2 pixel (x, y), labels N: 1 positive, 0 negative) and/or a box
    (4: x0, y0, x1, y1) on cached features."""
    predictor = _predictor(model, encoded)
    device = model.device
    with torch.inference_mode():
        _sync(device)
        start = time.perf_counter()
        masks, scores, _ = predictor.predict(
            point_coords=points,
            point_labels=labels,
            box=box,
            multimask_output=multimask,
        )
        _sync(device)
        seconds = time.perf_counter() - start
    return Prediction(masks.astype(bool), scores.astype(np.float32), seconds)


class _CachedPredictor(SamPredictor):
    """A predictor that already holds the features of the whole image.

    The mask generator calls ``set_image`` on each crop; with one crop (the whole image)
    that would re-run the encoder, so the cached features are used instead. Any other crop is
    encoded normally.
    """

    def __init__(self, model: DemoModel, encoded: EncodedImage) -> None:
        super().__init__(model.sam)
        self._encoded = encoded

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        if tuple(image.shape[:2]) == self._encoded.original_size:
            self.reset_image()
            self.features = self._encoded.features
            self.original_size = self._encoded.original_size
            self.input_size = self._encoded.input_size
            self.is_image_set = True
        else:
            super().set_image(image, image_format)


class _ProgressMaskGenerator(FastAutomaticMaskGenerator):
    """``FastAutomaticMaskGenerator`` that reports each finished batch of point prompts."""

    def __init__(self, predictor: SamPredictor, progress: Optional[ProgressFn], **kwargs: Any):
        super().__init__(predictor.model, **kwargs)
        self.predictor = predictor
        self._progress = progress
        self._batches_done = 0
        points = len(self.point_grids[0])
        self._batches_total = max(1, math.ceil(points / self.points_per_batch))

    def _process_batch(self, *args: Any, **kwargs: Any) -> Any:
        data = super()._process_batch(*args, **kwargs)
        self._batches_done += 1
        if self._progress is not None:
            done = min(self._batches_done, self._batches_total)
            self._progress(done / self._batches_total, f"point batch {done}/{self._batches_total}")
        return data


def segment_everything(
    model: DemoModel,
    image: np.ndarray,
    encoded: EncodedImage,
    points_per_side: int = 16,
    progress: Optional[ProgressFn] = None,
    points_per_batch: int = 64,
    pred_iou_thresh: float = 0.8,
    stability_score_thresh: float = 0.9,
    min_mask_region_area: int = 0,
) -> Tuple[List[Dict[str, Any]], float]:
    """Masks for a grid of ``points_per_side``^2 point prompts; returns (masks, seconds).

    Each mask is ``SamAutomaticMaskGenerator``'s dict (``segmentation`` H x W bool, ``area``,
    ``bbox``, ``predicted_iou``, ``stability_score`` ...), largest first.
    """
    if points_per_side < 1:
        raise ValueError(f"points_per_side must be >= 1, got {points_per_side}")
    generator = _ProgressMaskGenerator(
        _CachedPredictor(model, encoded),
        progress,
        points_per_side=int(points_per_side),
        points_per_batch=points_per_batch,
        pred_iou_thresh=pred_iou_thresh,
        stability_score_thresh=stability_score_thresh,
        min_mask_region_area=min_mask_region_area,
    )
    start = time.perf_counter()
    with torch.inference_mode():
        masks = generator.generate(image)
    seconds = time.perf_counter() - start
    masks.sort(key=lambda m: -int(m["area"]))
    return masks, seconds


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two H x W bool masks (1.0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(a, b).sum() / union)
