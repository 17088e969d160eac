"""Batched prompting of one SAM model through ``segment_anything.SamPredictor``.

The image is encoded once with ``SamPredictor.set_image``; every prompt batch then goes through
``SamPredictor.predict_torch``, with prompts mapped to the model's input frame exactly as
``SamPredictor.predict`` maps them. The encoder's own forward pass is timed with hooks (with a CUDA
synchronize on each side), so the time excludes resizing and normalization.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, ContextManager, List, Optional, Protocol, Tuple

import numpy as np
import torch
from segment_anything import SamPredictor

from ..modeling import keep_ratio_context
from ..runtime.timing import ModuleTimer

__all__ = ["PromptBatch", "MaskPredictor", "SamMaskPredictor", "MASK_CHOICES"]

MASK_CHOICES = ("best", "single")


@dataclass
class PromptBatch:
    """B prompts on one image; each row comes from the instance named in ``ann_ids``.

    ``boxes`` is B x 4 (x0, y0, x1, y1); ``point_coords`` B x K x 2 (x, y) with ``point_labels``
    B x K (1 positive, 0 negative). Coordinates are in the original image's pixels.
    """

    image_id: Any
    ann_ids: List[Any]
    boxes: Optional[np.ndarray] = None
    point_coords: Optional[np.ndarray] = None
    point_labels: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return len(self.ann_ids)


class MaskPredictor(Protocol):
    """What the evaluation needs from a model (SAM, or an oracle in the tests)."""

    def set_image(self, image: np.ndarray) -> float:
        """Encode an H x W x 3 uint8 RGB image; return the encoder's time in seconds."""

    def predict(self, prompts: PromptBatch, mask_choice: str) -> Tuple[np.ndarray, np.ndarray]:
        """Masks (B x H x W bool) and predicted IoUs (B,) for a prompt batch.

        ``mask_choice`` ``best``: three masks per prompt and the one with the highest predicted IoU;
        ``single``: the single-mask output.
        """


class SamMaskPredictor:
    """A :class:`MaskPredictor` over a ``segment_anything`` ``Sam``.

    Several of these may share one ``Sam`` (one big.LITTLE checkpoint at several keep ratios): each
    encodes at its own ratio through :func:`~biglittle_sam.modeling.keep_ratio_context`, without
    changing the shared model's.
    """

    def __init__(
        self,
        sam: torch.nn.Module,
        keep_ratio: Optional[float] = None,
        max_mask_pixels: int = 1 << 26,
    ) -> None:
        """
        Arguments:
          sam: a ``segment_anything.modeling.Sam`` (any image encoder), on its device, in eval mode.
          keep_ratio: the ratio every encoding runs at (big.LITTLE models, or 1 for plain SAM);
            None: the model's own.
          max_mask_pixels: prompts are decoded in chunks so that one chunk's upsampled masks
            (chunk x masks x H x W) stay under this many values (64 Mi floats = 256 MiB).
        """
        self.sam = sam
        self.keep_ratio = keep_ratio
        self.max_mask_pixels = int(max_mask_pixels)
        self.predictor = SamPredictor(sam)

    @property
    def device(self) -> torch.device:
        return self.predictor.device

    @torch.inference_mode()
    def set_image(self, image: np.ndarray) -> float:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"expected an H x W x 3 uint8 RGB image, got {image.dtype} {image.shape}"
            )
        ratio: ContextManager[None] = (
            nullcontext()
            if self.keep_ratio is None
            else keep_ratio_context(self.sam, self.keep_ratio)
        )
        timer = ModuleTimer(self.sam.image_encoder, self.device.type == "cuda")
        with ratio, timer:
            self.predictor.set_image(image)
        return timer.seconds

    def embedding(self) -> torch.Tensor:
        """The current image's embedding, 1 x C x g x g (g = img_size / patch size)."""
        return self.predictor.get_image_embedding()

    @property
    def input_size(self) -> Tuple[int, int]:
        """(h', w'): the image size after ResizeLongestSide, before padding."""
        h, w = self.predictor.input_size
        return int(h), int(w)

    @torch.inference_mode()
    def predict(
        self, prompts: PromptBatch, mask_choice: str = "best"
    ) -> Tuple[np.ndarray, np.ndarray]:
        if mask_choice not in MASK_CHOICES:
            raise ValueError(f"mask_choice must be one of {MASK_CHOICES}, got {mask_choice!r}")
        n = len(prompts)
        h, w = self.predictor.original_size
        if n == 0:
            return np.zeros((0, h, w), dtype=bool), np.zeros((0,), dtype=np.float32)
        multimask = mask_choice == "best"
        per_prompt = (3 if multimask else 1) * h * w
        chunk = max(1, self.max_mask_pixels // per_prompt)
        masks_out = np.empty((n, h, w), dtype=bool)
        scores_out = np.empty((n,), dtype=np.float32)
        transform = self.predictor.transform
        size = self.predictor.original_size
        for start in range(0, n, chunk):
            sl = slice(start, min(n, start + chunk))
            coords = labels = boxes = None
            if prompts.point_coords is not None and prompts.point_labels is not None:
                c = transform.apply_coords(prompts.point_coords[sl], size)  # (b, K, 2)
                coords = torch.as_tensor(c, dtype=torch.float, device=self.device)
                labels = torch.as_tensor(
                    prompts.point_labels[sl], dtype=torch.int, device=self.device
                )
            if prompts.boxes is not None:
                b = transform.apply_boxes(prompts.boxes[sl], size)  # (b, 4)
                boxes = torch.as_tensor(b, dtype=torch.float, device=self.device)
            masks, iou_pred, _ = self.predictor.predict_torch(
                coords, labels, boxes, multimask_output=multimask
            )  # (b, m, H, W) bool, (b, m)
            best = iou_pred.argmax(dim=1)  # (b,) first maximum, as numpy's argmax
            rows = torch.arange(masks.shape[0], device=masks.device)
            masks_out[sl] = masks[rows, best].cpu().numpy()  # (b, H, W)
            scores_out[sl] = iou_pred[rows, best].float().cpu().numpy()
        return masks_out, scores_out
