"""Export SAM's prompt encoder and mask decoder to ONNX, as ``segment_anything``'s ONNX example.

``export_prompt_decoder`` writes the prompt encoder and mask decoder through upstream
``segment_anything.utils.onnx.SamOnnxModel``, with the input names, options and defaults of
``segment_anything``'s ``scripts/export_onnx_model.py`` (all masks unless ``return_single_mask``),
and a dynamic prompt dimension: K boxes or point sets against one image's embedding in one call, as
``SamPredictor.predict_torch`` takes them. It pairs with the image encoder of :mod:`.encoder`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Tuple

import torch
from segment_anything.modeling import Sam
from torch import Tensor, nn

from .encoder import _ENCODERS, _model_name
from .onnx_file import DEFAULT_OPSET, PathLike, _torch_export, gelu_approximation, validate_opset

__all__ = ["DECODER_INPUTS", "DECODER_OUTPUTS", "export_prompt_decoder"]

DECODER_INPUTS = (
    "image_embeddings",
    "point_coords",
    "point_labels",
    "mask_input",
    "has_mask_input",
    "orig_im_size",
)
DECODER_OUTPUTS = ("masks", "iou_predictions", "low_res_masks")
# With return_extra_metrics, SamOnnxModel returns these, in this order.
DECODER_EXTRA_OUTPUTS = ("masks", "iou_predictions", "stability_scores", "areas", "low_res_masks")


def _decoder_inputs(
    sam: Sam, num_points: int = 5, seed: int = 0, num_prompts: int = 1
) -> Dict[str, Tensor]:
    """Example inputs of the prompt decoder, as ``scripts/export_onnx_model.py`` makes them, with
    ``num_prompts`` (K) prompt sets against one image.

    image_embeddings: 1 x C x h x w; point_coords: K x N x 2 (input-frame pixels); point_labels:
    K x N; mask_input: 1 x 1 x 4h x 4w; has_mask_input: 1; orig_im_size: 2 (H, W).
    """
    embed_dim = sam.prompt_encoder.embed_dim
    embed_size = sam.prompt_encoder.image_embedding_size
    size = int(sam.image_encoder.img_size)
    gen = torch.Generator().manual_seed(seed)
    k = num_prompts
    return {
        "image_embeddings": torch.randn(1, embed_dim, *embed_size, generator=gen),
        "point_coords": torch.randint(0, size, (k, num_points, 2), generator=gen).float(),
        "point_labels": torch.randint(0, 4, (k, num_points), generator=gen).float(),
        "mask_input": torch.randn(1, 1, *[4 * s for s in embed_size], generator=gen),
        "has_mask_input": torch.tensor([1.0]),
        "orig_im_size": torch.tensor([size * 3 // 4, size], dtype=torch.float),
    }


def _onnx_decoder_model(
    sam: Sam,
    return_single_mask: bool,
    use_stability_score: bool,
    return_extra_metrics: bool,
) -> nn.Module:
    from segment_anything.utils.onnx import SamOnnxModel

    class SamOnnxDecoder(SamOnnxModel):
        """``SamOnnxModel`` whose crop to the resized image stays dynamic when traced.

        Upstream crops with ``masks[..., : int(h), : int(w)]``; tracing turns those ints into the
        example's constants, so the exported masks are right only for images of the example's
        aspect ratio. Here the crop is an ``index_select`` over ``arange(h)``, which exports as
        ``Range`` + ``Gather``; the numbers equal upstream's.

        With ``use_stability_score``, a mask that is empty at both thresholds has stability
        0 / 0 = NaN upstream, and ``return_single_mask`` then picks by ``argmax`` over a NaN:
        PyTorch returns the NaN's index, onnxruntime's ArgMax another one, so the two runtimes
        returned different masks. Here such a score counts as 0 (an empty mask is never the
        best); every other score equals upstream's.
        """

        def select_masks(
            self, masks: Tensor, iou_preds: Tensor, num_points: int
        ) -> Tuple[Tensor, Tensor]:
            """masks K x M x h x w, iou_preds K x M -> the best mask K x 1 x h x w and its score."""
            scores = torch.where(torch.isnan(iou_preds), torch.zeros_like(iou_preds), iou_preds)
            return super().select_masks(masks, scores, num_points)

        def mask_postprocessing(self, masks: Tensor, orig_im_size: Tensor) -> Tensor:
            """masks K x M x h x w low-res logits -> K x M x H x W at ``orig_im_size`` (H, W)."""
            masks = nn.functional.interpolate(
                masks, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False
            )  # (K, M, S, S)
            prepadded = self.resize_longest_image_size(orig_im_size, self.img_size)  # (2,) int64
            rows = torch.arange(prepadded[0], device=masks.device)  # (h',)
            cols = torch.arange(prepadded[1], device=masks.device)  # (w',)
            masks = masks.index_select(2, rows).index_select(3, cols)  # (K, M, h', w')
            size = orig_im_size.to(torch.int64)
            return nn.functional.interpolate(
                masks, size=(size[0], size[1]), mode="bilinear", align_corners=False
            )  # (K, M, H, W)

    return SamOnnxDecoder(
        model=sam,
        return_single_mask=return_single_mask,
        use_stability_score=use_stability_score,
        return_extra_metrics=return_extra_metrics,
    ).eval()


def export_prompt_decoder(
    sam: Sam,
    path: PathLike,
    opset: int = DEFAULT_OPSET,
    return_single_mask: bool = False,
    use_stability_score: bool = False,
    return_extra_metrics: bool = False,
    gelu_approximate: bool = False,
) -> Path:
    """Export SAM's prompt encoder and mask decoder through upstream ``SamOnnxModel``.

    Arguments:
      sam: a ``Sam`` (any registry model; the image encoder is not exported).
      path: the ``.onnx`` file to write (atomically).
      opset: ONNX opset, ``MIN_OPSET`` to :func:`max_opset`.
      return_single_mask: only the best mask (by predicted IoU, or the single-mask output once
        there are more than 2 points); upstream's default is all masks.
      use_stability_score: ``iou_predictions`` are stability scores of the low-resolution masks
        (offset 1.0) instead of the predicted IoU.
      return_extra_metrics: also return ``stability_scores`` and ``areas`` of the upscaled masks.
      gelu_approximate: GELU as its tanh approximation (the model itself is left exact).
      (All four as upstream's ``scripts/export_onnx_model.py``.)

    Inputs (``segment_anything``'s names): image_embeddings 1 x C x h x w (the encoder's output),
    point_coords K x N x 2 (K prompt sets for the same image and N points each, both dynamic;
    pixels in the resized input frame; a box is its two corners with labels 2 and 3, and without
    a box add a (0, 0) point of label -1), point_labels K x N, mask_input 1 x 1 x 4h x 4w (or
    K x 1 x 4h x 4w), has_mask_input 1, orig_im_size 2 (H, W). Outputs: masks K x M x H x W
    logits at the original size, iou_predictions K x M, low_res_masks K x M x 4h x 4w (M = 1 with
    ``return_single_mask``, else 4: the single-mask output, then SAM's three multimask outputs);
    with ``return_extra_metrics`` also stability_scores K x M and areas K x M, before
    low_res_masks.

    Returns:
      ``path`` as a ``Path``.

    Raises:
      ValueError: ``sam`` is not a ``Sam``, or the opset is out of range.
    """
    if not isinstance(sam, Sam):
        raise ValueError(
            "export_prompt_decoder needs a whole segment_anything Sam (from sam_model_registry), "
            f"got {type(sam).__name__}"
        )
    encoder = sam.image_encoder
    opset = validate_opset(opset)
    onnx_model = _onnx_decoder_model(
        sam, return_single_mask, use_stability_score, return_extra_metrics
    )
    # Traced with 2 prompt sets, so no reshape can fold the prompt count into a constant.
    inputs = _decoder_inputs(sam, num_prompts=2)
    device = next(sam.parameters()).device
    args = tuple(v.to(device) for v in inputs.values())
    metadata = {
        "producer": "biglittle_sam",
        "kind": "prompt_decoder",
        "model_name": _model_name(encoder) if isinstance(encoder, _ENCODERS) else "custom",
        "img_size": str(int(encoder.img_size)),
        "return_single_mask": str(bool(return_single_mask)),
        "use_stability_score": str(bool(use_stability_score)),
        "return_extra_metrics": str(bool(return_extra_metrics)),
        "gelu_approximate": str(bool(gelu_approximate)),
        "prompts": "point_coords K x N x 2: K prompt sets (boxes) per image, both dynamic",
    }
    outputs = DECODER_EXTRA_OUTPUTS if return_extra_metrics else DECODER_OUTPUTS
    prompt_axes = {0: "num_prompts", 1: "num_points"}
    dynamic_axes = {"point_coords": prompt_axes, "point_labels": prompt_axes}
    dynamic_axes["mask_input"] = {0: "num_masks"}
    dynamic_axes.update({name: {0: "num_prompts"} for name in outputs})
    was_training = sam.training
    try:
        sam.eval()
        with gelu_approximation(onnx_model, gelu_approximate):
            return _torch_export(
                onnx_model, args, path, opset, DECODER_INPUTS, outputs, dynamic_axes, metadata
            )
    finally:
        sam.train(was_training)
