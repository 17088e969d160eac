"""Segment everything with the masks of ``SamAutomaticMaskGenerator`` and a cheaper point loop.

On a CPU, upstream's generator spends most of its time outside the image encoder: for each batch
of ``points_per_batch`` (64) grid points it copies the image embedding 64 times, runs the mask
decoder on the copies, then upsamples all three masks of every point to the image size before it
drops the ones whose predicted IoU is too low. :class:`FastAutomaticMaskGenerator` changes three
things in that loop and nothing in what it returns:

1. **One image, not one copy per point.** With point prompts only, every point's dense prompt
   embedding is the same (no mask input), so the decoder's first layer computes the same image-side
   keys, values and queries for every point. :func:`predict_masks_one_image` gives the decoder's
   two-way transformer the image embedding once (batch 1) and the points' tokens (batch B); its
   attention broadcasts over the batch, so the first layer's image-side projections run once per
   call instead of once per point. The image tokens become per-point after that layer, as before.
2. **Small decoder calls.** The points run in chunks of ``decoder_batch`` (2 on a CPU). The
   decoder's per-point tensors are ``4096 x 256``; at 64 points each is 268 MB and the decoder is
   bound by memory traffic (copies, adds, LayerNorms), at 4 points they stay in cache.
3. **Filter, then upsample.** The predicted-IoU filter runs on the low-resolution masks, and only
   the masks that pass it are upsampled (upstream upsamples every mask and then filters).
   Upsampling works mask by mask, so the kept masks are the same numbers either way.

1 and 2 compute each point's masks with the same operations in another grouping, so the logits
agree with upstream's to float rounding (about 1e-6); everything after the decoder (stability
score, thresholding, boxes, crop-edge filter, RLE, NMS, crops, small-region removal, output modes)
is upstream's code, inherited unchanged.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from segment_anything import SamAutomaticMaskGenerator
from segment_anything.modeling import MaskDecoder, Sam, TwoWayTransformer
from segment_anything.utils.amg import (
    MaskData,
    batched_mask_to_box,
    calculate_stability_score,
    is_box_near_crop_edge,
    mask_to_rle_pytorch,
    uncrop_masks,
)

__all__ = [
    "CPU_DECODER_BATCH",
    "MASK_GENERATORS",
    "FastAutomaticMaskGenerator",
    "decode_points",
    "mask_generator_class",
    "predict_masks_one_image",
]

# Points per mask-decoder call on a CPU. Measured on the 2-core AMD EPYC VM with SAM ViT-B's
# decoder through predict_masks_one_image, 3 masks per point, median of 7 interleaved rounds of 48
# points (decoder_ms_per_point): 55 ms per point at 2, 53 at 3, 60 at 4, 62 at 6 (upstream's
# decoder on copies: 71, 80, 80, 88; at 64, upstream's generator's batch, 169). 2 and 3 are
# within noise of each other; the segment-everything benchmark's sweep measures any machine.
CPU_DECODER_BATCH = 2


def predict_masks_one_image(
    decoder: MaskDecoder,
    image_embeddings: torch.Tensor,
    image_pe: torch.Tensor,
    sparse_prompt_embeddings: torch.Tensor,
    dense_prompt_embeddings: torch.Tensor,
    multimask_output: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``MaskDecoder.forward`` for B prompts on one image whose dense prompt embedding they share.

    Upstream's ``predict_masks`` repeats the image embedding (and its positional encoding) once
    per prompt; here the two-way transformer gets them once and broadcasts, so the first layer's
    image-side projections run once. Same modules, same operations per prompt.

    Arguments:
      decoder: segment_anything's ``MaskDecoder`` (with its ``TwoWayTransformer``).
      image_embeddings: 1 x C x h x w.
      image_pe: 1 x C x h x w dense positional encoding.
      sparse_prompt_embeddings: B x N x C point / box embeddings.
      dense_prompt_embeddings: 1 x C x h x w, the one dense embedding of every prompt (the
        no-mask embedding when no mask is given).
      multimask_output: three masks per prompt (True) or one.

    Returns:
      (B x M x 4h x 4w low-resolution mask logits, B x M predicted IoUs), M = 3 or 1, as
      ``decoder(...)`` returns them.
    """
    if image_embeddings.shape[0] != 1 or dense_prompt_embeddings.shape[0] != 1:
        raise ValueError(
            "one image and one shared dense prompt embedding expected (1 x C x h x w), got "
            f"{tuple(image_embeddings.shape)} and {tuple(dense_prompt_embeddings.shape)}"
        )
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    batch = sparse_prompt_embeddings.shape[0]
    output_tokens = output_tokens.unsqueeze(0).expand(batch, -1, -1)
    tokens = torch.cat((output_tokens, sparse_prompt_embeddings), dim=1)  # B x (1 + 4 + N) x C
    src = image_embeddings + dense_prompt_embeddings  # 1 x C x h x w, shared by the B prompts
    _, c, h, w = src.shape
    hs, keys = decoder.transformer(src, image_pe, tokens)  # B x T x C, B x hw x C
    iou_token_out = hs[:, 0, :]  # B x C
    mask_tokens_out = hs[:, 1 : (1 + decoder.num_mask_tokens), :]  # B x 4 x C
    src = keys.expand(batch, -1, -1).transpose(1, 2).reshape(batch, c, h, w)  # B x C x h x w
    upscaled = decoder.output_upscaling(src)  # B x C' x 4h x 4w
    hyper_in = torch.stack(
        [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)],
        dim=1,
    )  # B x 4 x C'
    b, c2, h2, w2 = upscaled.shape
    masks = (hyper_in @ upscaled.view(b, c2, h2 * w2)).view(b, -1, h2, w2)  # B x 4 x 4h x 4w
    iou_pred = decoder.iou_prediction_head(iou_token_out)  # B x 4
    chosen = slice(1, None) if multimask_output else slice(0, 1)
    return masks[:, chosen], iou_pred[:, chosen]


def _shares_one_image(decoder: Any) -> bool:
    """Whether :func:`predict_masks_one_image` applies: upstream's decoder and transformer, with at
    least one layer (a subclass may change what they compute)."""
    transformer = getattr(decoder, "transformer", None)
    return (
        type(decoder) is MaskDecoder
        and type(transformer) is TwoWayTransformer
        and len(transformer.layers) >= 1
    )


@torch.no_grad()
def decode_points(
    model: Sam,
    features: torch.Tensor,
    coords: torch.Tensor,
    labels: torch.Tensor,
    chunk: int,
    one_image: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Low-resolution mask logits and predicted IoUs of point prompts on one image, three masks
    each, as ``predict_torch(..., multimask_output=True)`` computes them before upsampling.

    Arguments:
      model: a ``Sam`` (its prompt encoder and mask decoder run).
      features: 1 x C x h x w image embedding.
      coords: B x N x 2 point coordinates in the model's input frame.
      labels: B x N point labels.
      chunk: prompts per mask-decoder call.
      one_image: decode through :func:`predict_masks_one_image` where it applies (upstream's
        decoder, one image); False always calls ``mask_decoder`` on one embedding copy per prompt,
        as upstream's generator does.

    Returns:
      (B x 3 x 4h x 4w logits, B x 3 predicted IoUs).
    """
    image_pe = model.prompt_encoder.get_dense_pe()
    share = one_image and _shares_one_image(model.mask_decoder) and features.shape[0] == 1
    lows: List[torch.Tensor] = []
    ious: List[torch.Tensor] = []
    for start in range(0, coords.shape[0], chunk):
        sparse, dense = model.prompt_encoder(
            points=(coords[start : start + chunk], labels[start : start + chunk]),
            boxes=None,
            masks=None,
        )
        if share:  # dense is the no-mask embedding, the same for every prompt
            low, iou = predict_masks_one_image(
                model.mask_decoder, features, image_pe, sparse, dense[:1]
            )
        else:
            low, iou = model.mask_decoder(
                image_embeddings=features,
                image_pe=image_pe,
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=True,
            )
        lows.append(low)
        ious.append(iou)
    return torch.cat(lows), torch.cat(ious)


class FastAutomaticMaskGenerator(SamAutomaticMaskGenerator):
    """``SamAutomaticMaskGenerator`` with chunked decoding and filtering before upsampling.

    Takes every argument of ``SamAutomaticMaskGenerator`` (``points_per_side``,
    ``pred_iou_thresh``, ``output_mode``...) with the same defaults, and returns the same list of
    mask records.

    Arguments:
      model: a SAM or big.LITTLE ``Sam``.
      decoder_batch: points per mask-decoder call; None: :data:`CPU_DECODER_BATCH` (2) on a CPU, the
        whole ``points_per_batch`` on other devices (upstream's behaviour).
      kwargs: ``SamAutomaticMaskGenerator``'s arguments.

    Raises:
      ValueError: ``decoder_batch`` is not a positive integer.
    """

    def __init__(self, model: Sam, decoder_batch: Optional[int] = None, **kwargs: Any) -> None:
        if decoder_batch is not None and (
            isinstance(decoder_batch, bool)
            or not isinstance(decoder_batch, int)
            or decoder_batch < 1
        ):
            raise ValueError(
                f"decoder_batch must be a positive integer or None, got {decoder_batch!r}"
            )
        super().__init__(model, **kwargs)
        self.decoder_batch = decoder_batch

    def _chunk(self, points: int) -> int:
        if self.decoder_batch is not None:
            return self.decoder_batch
        return CPU_DECODER_BATCH if self.predictor.device.type == "cpu" else points

    def _decode(self, coords: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """:func:`decode_points` on the predictor's image, in chunks of ``decoder_batch``."""
        return decode_points(
            self.predictor.model,
            self.predictor.features,
            coords,
            labels,
            self._chunk(coords.shape[0]),
        )

    def _process_crop(
        self,
        image: np.ndarray,
        crop_box: List[int],
        crop_layer_idx: int,
        orig_size: Tuple[int, ...],
    ) -> MaskData:
        """Upstream's ``_process_crop``, with a crop that kept no mask giving ``crop_boxes`` of
        shape 0 x 4 (upstream's 0-length tensor makes ``box_area`` fail when every crop of a
        ``crop_n_layers >= 1`` run comes back empty)."""
        data = super()._process_crop(image, crop_box, crop_layer_idx, orig_size)
        if len(data["rles"]) == 0:
            data["crop_boxes"] = torch.zeros((0, 4), dtype=torch.int64)  # 0 x [x0, y0, x1, y1]
        return data

    def _process_batch(
        self,
        points: np.ndarray,
        im_size: Tuple[int, ...],
        crop_box: List[int],
        orig_size: Tuple[int, ...],
    ) -> MaskData:
        """Upstream's ``_process_batch`` with the two changes of this module.

        Arguments:
          points: P x 2 grid points in the crop's pixel frame.
          im_size: the crop's (H, W).
          crop_box: the crop's [x0, y0, x1, y1] in the image.
          orig_size: the image's (H, W).
        """
        orig_h, orig_w = orig_size
        transformed = self.predictor.transform.apply_coords(points, im_size)
        in_points = torch.as_tensor(transformed, device=self.predictor.device)
        in_labels = torch.ones(in_points.shape[0], dtype=torch.int, device=in_points.device)
        low, iou_preds = self._decode(in_points[:, None, :], in_labels[:, None])
        per_point = low.shape[1]

        # One row per (point, mask), in upstream's order: point 0's three masks, then point 1's...
        data = MaskData(
            masks=low.flatten(0, 1),  # (P * 3) x h x w low-resolution logits
            iou_preds=iou_preds.flatten(0, 1),  # (P * 3)
            points=torch.as_tensor(points.repeat(per_point, axis=0)),  # (P * 3) x 2
        )
        del low
        if self.pred_iou_thresh > 0.0:
            data.filter(data["iou_preds"] > self.pred_iou_thresh)

        # Upsample only the survivors: (N x 1 x h x w) -> (N x 1 x H x W) -> N x H x W.
        data["masks"] = self.predictor.model.postprocess_masks(
            data["masks"][:, None], self.predictor.input_size, self.predictor.original_size
        )[:, 0]

        # From here on, upstream's code.
        data["stability_score"] = calculate_stability_score(
            data["masks"], self.predictor.model.mask_threshold, self.stability_score_offset
        )
        if self.stability_score_thresh > 0.0:
            data.filter(data["stability_score"] >= self.stability_score_thresh)
        data["masks"] = data["masks"] > self.predictor.model.mask_threshold
        data["boxes"] = batched_mask_to_box(data["masks"])
        keep = ~is_box_near_crop_edge(data["boxes"], crop_box, [0, 0, orig_w, orig_h])
        if not torch.all(keep):
            data.filter(keep)
        data["masks"] = uncrop_masks(data["masks"], crop_box, orig_h, orig_w)
        data["rles"] = mask_to_rle_pytorch(data["masks"])
        del data["masks"]
        return data


# The mask generators by name (biglittle-sam-amg's --generator, the segment-everything benchmark).
MASK_GENERATORS: Dict[str, Any] = {
    "fast": FastAutomaticMaskGenerator,
    "upstream": SamAutomaticMaskGenerator,
}


def mask_generator_class(name: str) -> Any:
    """The :data:`MASK_GENERATORS` entry ``name`` (``fast`` or ``upstream``).

    Raises:
      ValueError: an unknown name.
    """
    if name not in MASK_GENERATORS:
        raise ValueError(f"unknown generator {name!r}; expected one of {list(MASK_GENERATORS)}")
    return MASK_GENERATORS[name]
