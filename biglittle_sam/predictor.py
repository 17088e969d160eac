"""Many images through the image encoder at once: ``SamPredictor`` with a batched ``set_images``.

``BatchedSamPredictor`` is a ``segment_anything.SamPredictor`` (any SAM model of the registry: plain
SAM or big.LITTLE). ``set_images`` prepares every image exactly as ``SamPredictor.set_image`` does
(``ResizeLongestSide``, then ``Sam.preprocess``: normalize and pad to S x S), so images of different
sizes share one S x S batch, and runs the encoder once per chunk of ``batch_size`` images. Prompts
then go through ``SamPredictor.predict`` for each image, with that image's embedding and sizes, so a
batched prediction is the loop of single predictions, with the encoder's work batched.

    predictor = BatchedSamPredictor(sam_model_registry["bl_b"](checkpoint="bl_b.pth"))
    predictor.set_images([image_a, image_b])  # H x W x 3 uint8 each, sizes may differ
    results = predictor.predict_batch(point_coords=[pts_a, pts_b], point_labels=[lab_a, lab_b])
    masks_a, iou_a, low_res_a = results[0]
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from segment_anything import SamPredictor
from segment_anything.modeling import Sam

__all__ = ["BatchedSamPredictor", "check_image"]

Prediction = Tuple[np.ndarray, np.ndarray, np.ndarray]


def check_image(image: Any, index: Optional[int] = None) -> np.ndarray:
    """Return ``image`` if it is an H x W x 3 uint8 array with H, W > 0; else raise ``ValueError``.

    ``index`` names the image's position in a batch in the message.
    """
    where = "image" if index is None else f"images[{index}]"
    if not isinstance(image, np.ndarray):
        raise ValueError(
            f"{where}: expected an H x W x 3 uint8 numpy array (RGB or BGR, 0..255), got "
            f"{type(image).__name__}"
        )
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or 0 in image.shape:
        raise ValueError(
            f"{where}: expected an H x W x 3 uint8 array (RGB or BGR, 0..255), got a {image.dtype} "
            f"array of shape {image.shape}"
        )
    return image


class BatchedSamPredictor(SamPredictor):
    """``SamPredictor`` over several images, encoded in batches.

    After :meth:`set_images`, image 0 is the *current* image, so everything ``SamPredictor`` offers
    (``predict``, ``predict_torch``, ``original_size``, ``input_size``) works on it unchanged;
    :meth:`select_image` makes another image current. :meth:`predict_batch` prompts every image in
    one call. ``set_image`` (one image) stays available and is ``set_images([image])``.
    """

    def __init__(self, sam_model: Sam, batch_size: Optional[int] = None) -> None:
        """
        Arguments:
          sam_model: a ``segment_anything`` ``Sam`` (any model of ``sam_model_registry``).
          batch_size: default number of images per encoder call in :meth:`set_images`; None encodes
            all images in one call.
        """
        super().__init__(sam_model)
        self.batch_size = _check_batch_size(batch_size)

    def reset_image(self) -> None:
        """Forget every image set."""
        super().reset_image()
        self.batch_features: Optional[torch.Tensor] = None
        self.original_sizes: List[Tuple[int, int]] = []
        self.input_sizes: List[Tuple[int, int]] = []
        self.current_index: Optional[int] = None

    @property
    def num_images(self) -> int:
        """How many images the last :meth:`set_images` encoded (0 before any)."""
        return len(self.original_sizes)

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """One image, as ``SamPredictor.set_image``: ``set_images([image], image_format)``."""
        self.set_images([image], image_format=image_format)

    def set_torch_image(
        self, transformed_image: torch.Tensor, original_image_size: Tuple[int, ...]
    ) -> None:
        """As ``SamPredictor.set_torch_image`` (1 x 3 x H x W, resized), keeping batch state."""
        super().set_torch_image(transformed_image, original_image_size)
        self.batch_features = self.features
        self.original_sizes = [_pair(original_image_size)]
        self.input_sizes = [_pair(self.input_size)]
        self.current_index = 0

    @torch.no_grad()
    def set_images(
        self,
        images: Sequence[np.ndarray],
        image_format: str = "RGB",
        batch_size: Optional[int] = None,
    ) -> None:
        """Encode ``images`` (each H x W x 3 uint8, sizes may differ) in batched encoder calls.

        Arguments:
          images: the images, in ``image_format``.
          image_format: "RGB" or "BGR".
          batch_size: images per encoder call; default: the predictor's ``batch_size`` (None: all
            images in one call).
        """
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
        if isinstance(images, np.ndarray) and images.ndim == 3:
            raise ValueError(
                "set_images takes a sequence of H x W x 3 images; for one image use set_image or "
                "set_images([image])"
            )
        images = list(images)
        if not images:
            raise ValueError("set_images needs at least one image, got an empty sequence")
        for i, image in enumerate(images):
            check_image(image, i)
        chunk = _check_batch_size(batch_size) or self.batch_size or len(images)
        self.reset_image()
        features = []
        try:
            for start in range(0, len(images), chunk):
                # Preprocessed per chunk: memory grows with batch_size, not with len(images).
                batch = torch.cat(
                    [self._prepare(im, image_format) for im in images[start:][:chunk]]
                )
                features.append(self.model.image_encoder(batch))  # (b, C, S/16, S/16)
        except BaseException:
            self.reset_image()
            raise
        self.batch_features = torch.cat(features)  # (B, C, S/16, S/16)
        self.is_image_set = True
        self.select_image(0)

    def _prepare(self, image: np.ndarray, image_format: str) -> torch.Tensor:
        """One image as ``SamPredictor.set_image`` prepares it: 1 x 3 x S x S, normalized."""
        if image_format != self.model.image_format:
            image = image[..., ::-1]
        resized = self.transform.apply_image(image)  # (h', w', 3) uint8
        x = (
            torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()
        )  # (3, h', w')
        self.original_sizes.append(_pair(image.shape[:2]))
        self.input_sizes.append(_pair(x.shape[-2:]))
        return self.model.preprocess(x[None])  # (1, 3, S, S)

    def select_image(self, index: int) -> None:
        """Make image ``index`` of the last :meth:`set_images` current for ``predict``."""
        if not self.is_image_set or self.batch_features is None:
            raise RuntimeError("Images must be set with .set_images(...) before selecting one.")
        if (
            not isinstance(index, (int, np.integer))
            or not -self.num_images <= index < self.num_images
        ):
            raise IndexError(f"image index {index!r} is out of range for {self.num_images} images")
        index = int(index) % self.num_images
        self.features = self.batch_features[index : index + 1]  # (1, C, S/16, S/16)
        self.original_size = self.original_sizes[index]
        self.input_size = self.input_sizes[index]
        self.current_index = index

    def get_image_embedding(self, index: Optional[int] = None) -> torch.Tensor:
        """Image embeddings: B x C x h x w for every image, or 1 x C x h x w for image ``index``.

        (C = 256, h = w = 64 for the full-size models.)
        """
        if not self.is_image_set or self.batch_features is None:
            raise RuntimeError("Images must be set with .set_images(...) to generate an embedding.")
        if index is None:
            return self.batch_features
        self.select_image(index)
        return self.features

    def predict_torch(self, *args: Any, **kwargs: Any) -> Tuple[torch.Tensor, ...]:
        """As ``SamPredictor.predict_torch``, with float outputs in fp32.

        Under autocast the mask decoder returns bf16 / fp16 IoU predictions and logits, which numpy
        (and so ``SamPredictor.predict``) cannot take.
        """
        masks, iou_predictions, low_res_masks = super().predict_torch(*args, **kwargs)
        if masks.is_floating_point():
            masks = masks.float()  # (B, C, H, W) logits when return_logits
        return masks, iou_predictions.float(), low_res_masks.float()

    def _predict_boxes(
        self, index: int, prompts: Dict[str, Any], multimask_output: bool, return_logits: bool
    ) -> Prediction:
        """K boxes (and their K point sets and masks) on the current image through
        ``predict_torch``, transformed as ``SamPredictor.predict`` transforms one prompt."""
        boxes = np.asarray(prompts["box"])
        if boxes.ndim != 2 or boxes.shape[1] != 4 or boxes.shape[0] < 1:
            raise ValueError(
                f"box[{index}]: expected a K x 4 array of boxes (x0, y0, x1, y1), got shape "
                f"{boxes.shape}"
            )
        k = boxes.shape[0]
        size = self.original_size
        box_torch = torch.as_tensor(
            self.transform.apply_boxes(boxes, size), dtype=torch.float, device=self.device
        )  # (K, 4), input frame
        coords_torch = labels_torch = mask_torch = None
        if prompts["point_coords"] is not None:
            coords = _check_prompt_shape(
                prompts["point_coords"], "point_coords", index, (k, None, 2)
            )
            n = coords.shape[1]
            labels = _check_prompt_shape(prompts["point_labels"], "point_labels", index, (k, n))
            coords_torch = torch.as_tensor(
                self.transform.apply_coords(coords, size), dtype=torch.float, device=self.device
            )  # (K, N, 2)
            labels_torch = torch.as_tensor(labels, dtype=torch.int, device=self.device)  # (K, N)
        if prompts["mask_input"] is not None:
            masks = _check_prompt_shape(
                prompts["mask_input"], "mask_input", index, (k, 1, 256, 256)
            )
            mask_torch = torch.as_tensor(masks, dtype=torch.float, device=self.device)
        masks_out, iou, low_res = self.predict_torch(
            coords_torch,
            labels_torch,
            box_torch,
            mask_torch,
            multimask_output=multimask_output,
            return_logits=return_logits,
        )  # (K, C, H, W), (K, C), (K, C, 256, 256)
        return (
            masks_out.detach().cpu().numpy(),
            iou.detach().cpu().numpy(),
            low_res.detach().cpu().numpy(),
        )

    def predict_batch(
        self,
        point_coords: Optional[Sequence[Optional[np.ndarray]]] = None,
        point_labels: Optional[Sequence[Optional[np.ndarray]]] = None,
        box: Optional[Sequence[Optional[np.ndarray]]] = None,
        mask_input: Optional[Sequence[Optional[np.ndarray]]] = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> List[Prediction]:
        """One ``SamPredictor.predict`` per image, each with its own prompts; several boxes per
        image as ``SamPredictor.predict_torch`` takes them.

        Every prompt argument is None or a sequence with one entry per image (in the order of
        :meth:`set_images`), and each entry is what ``SamPredictor.predict`` takes, or None:

        Arguments:
          point_coords: per image an N x 2 array of (x, y) points in that image's pixels (K x N x 2
            with K boxes).
          point_labels: per image a length-N array, 1 foreground, 0 background (K x N with K
            boxes).
          box: per image a length-4 array (x0, y0, x1, y1) in that image's pixels, or a K x 4 array
            of K boxes, each prompted on its own (with its own points and mask when given).
          mask_input: per image a 1 x 256 x 256 low-resolution mask from an earlier prediction
            (K x 1 x 256 x 256 with K boxes).
          multimask_output: three masks per prompt (True) or one.
          return_logits: mask logits instead of binary masks.

        Returns:
          one (masks C x H x W, iou_predictions C, low_res_logits C x 256 x 256) per image, as
          ``SamPredictor.predict`` returns them (H x W: that image's original size); for an
          image given K x 4 boxes: (K x C x H x W, K x C, K x C x 256 x 256), as
          ``SamPredictor.predict_torch`` returns them for a batch of K boxes.
        """
        if not self.is_image_set:
            raise RuntimeError("Images must be set with .set_images(...) before mask prediction.")
        n = self.num_images
        prompts = {
            "point_coords": point_coords,
            "point_labels": point_labels,
            "box": box,
            "mask_input": mask_input,
        }
        for name, value in prompts.items():
            if value is not None and (isinstance(value, np.ndarray) or len(value) != n):
                got = (
                    f"an array of shape {value.shape}"
                    if isinstance(value, np.ndarray)
                    else (f"{len(value)} entries")
                )
                raise ValueError(f"{name} must be a list with one entry per image ({n}), got {got}")
        results: List[Prediction] = []
        current = self.current_index
        try:
            for i in range(n):
                self.select_image(i)
                one = {k: (v[i] if v is not None else None) for k, v in prompts.items()}
                if one["point_coords"] is not None and one["point_labels"] is None:
                    raise ValueError(f"image {i}: point_coords given without point_labels")
                if one["box"] is not None and np.ndim(one["box"]) == 2:
                    results.append(self._predict_boxes(i, one, multimask_output, return_logits))
                    continue
                if one["box"] is not None and np.shape(one["box"]) != (4,):
                    raise ValueError(
                        f"box[{i}]: expected a length-4 array (x0, y0, x1, y1) or a K x 4 array "
                        f"of K boxes, got shape {np.shape(one['box'])}"
                    )
                results.append(
                    self.predict(
                        **one, multimask_output=multimask_output, return_logits=return_logits
                    )
                )
        finally:
            if current is not None:
                self.select_image(current)
        return results


def _check_prompt_shape(value: Any, name: str, index: int, shape: Tuple[Any, ...]) -> np.ndarray:
    """``value`` as an array whose shape matches ``shape`` (None entries: any size)."""
    array = np.asarray(value)
    if array.ndim != len(shape) or any(
        want is not None and got != want for got, want in zip(array.shape, shape)
    ):
        form = " x ".join("N" if want is None else str(want) for want in shape)
        raise ValueError(
            f"{name}[{index}]: with {shape[0]} boxes expected shape {form}, got {array.shape}"
        )
    return array


def _check_batch_size(batch_size: Optional[int]) -> Optional[int]:
    if batch_size is None:
        return None
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size}")
    return int(batch_size)


def _pair(size: Sequence[int]) -> Tuple[int, int]:
    return int(size[0]), int(size[1])
