"""The heat map statistic of a distilled student: where its big blocks spent their capacity.

For each image of a COCO split, the student's encoder runs at a keep ratio with its routing
recorded (``forward_with_aux``), and :func:`~.capacity.capacity_share` compares the share of
routed tokens on objects with the objects' share of the image. Three routings are measured on the
same images: the learned routers, random routing, and the training-free patch gradient energy
(:func:`~.routing.gradient_energy` selected with the encoder's capacities by
:func:`~.routing.select_top`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from biglittle_sam.build_sam import load_sam
from biglittle_sam.data.masks import decode_rle, segmentation_to_rle

from .capacity import CapacityShare, capacity_share, object_coverage
from .routing import gradient_energy, select_top

__all__ = ["measure_capacity_share", "prepare_image"]


def prepare_image(
    image: np.ndarray, objects: np.ndarray, img_size: int, pixel_mean: Tensor, pixel_std: Tensor
) -> Tuple[Tensor, Tensor, Tensor]:
    """An image as the encoder sees it, with its object mask and valid area at the same scale.

    ``ResizeLongestSide`` to ``img_size``, normalization and zero padding to a square, as
    ``SamPredictor.set_image`` does.

    Arguments:
      image: H x W x 3 uint8 RGB.
      objects: H x W bool, the union of the image's object masks.
      img_size: the encoder's input side S.
      pixel_mean, pixel_std: 3 x 1 x 1, the model's normalization.

    Returns:
      The input (1 x 3 x S x S), the object mask (1 x S x S, 0/1 fp32, nearest) and the valid
      area (1 x S x S bool, False on padding).
    """
    h, w = image.shape[:2]
    scale = img_size / max(h, w)
    nh, nw = int(h * scale + 0.5), int(w * scale + 0.5)
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float()  # (1,3,H,W)
    x = F.interpolate(x, (nh, nw), mode="bilinear", align_corners=False, antialias=True)
    x = (x - pixel_mean.cpu()) / pixel_std.cpu()  # (1, 3, nh, nw)
    m = torch.from_numpy(objects.astype(np.float32))[None, None]  # (1, 1, H, W)
    m = F.interpolate(m, (nh, nw), mode="nearest")[:, 0]  # (1, nh, nw)
    pad = (0, img_size - nw, 0, img_size - nh)
    valid = F.pad(torch.ones(1, nh, nw, dtype=torch.bool), pad)  # (1, S, S)
    return F.pad(x, pad), F.pad(m, pad), valid


def _split_images(images: Path, annotations: Path, limit: int) -> List[Tuple[Path, np.ndarray]]:
    """The first ``limit`` images of a COCO split with the union of their object masks."""
    coco = json.loads(annotations.read_text(encoding="utf-8"))
    masks: Dict[int, np.ndarray] = {}
    sizes = {img["id"]: (img["height"], img["width"]) for img in coco["images"]}
    for ann in coco["annotations"]:
        if ann.get("iscrowd"):
            continue
        h, w = sizes[ann["image_id"]]
        mask = decode_rle(segmentation_to_rle(ann["segmentation"], h, w)).astype(bool)
        masks[ann["image_id"]] = masks.get(ann["image_id"], np.zeros((h, w), bool)) | mask
    out = []
    for img in coco["images"][:limit]:
        blank = np.zeros((img["height"], img["width"]), bool)
        out.append((images / img["file_name"], masks.get(img["id"], blank)))
    return out


@torch.no_grad()
def measure_capacity_share(
    student: str,
    images: Path,
    annotations: Path,
    keep_ratio: float,
    device: str = "cpu",
    limit: int = 100,
) -> Dict[str, CapacityShare]:
    """The capacity share of a big.LITTLE checkpoint's learned and random routing and of the
    training-free gradient energy, at ``keep_ratio`` on the first ``limit`` images of a split.

    Returns:
      ``{"learned": ..., "random": ..., "gradient energy (training-free)": ...}``.
    """
    sam, config, _ = load_sam(student)
    sam.to(device)
    encoder = sam.image_encoder
    if not hasattr(encoder, "forward_with_aux"):
        raise ValueError(f"{student} is not a big.LITTLE checkpoint: it has no routing to measure")
    patch, S = config.patch_size, config.img_size
    layers = {name: [] for name in ("learned", "random")}  # type: Dict[str, List[Tensor]]
    heuristic: List[Tensor] = []
    covers: List[Tensor] = []
    valids: List[Tensor] = []
    windows = [
        0 if i in config.global_attn_indexes else config.window_size for i in range(config.depth)
    ]
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(0)  # random routing draws from the global RNG
    try:
        for path, objects in _split_images(images, annotations, limit):
            image = np.asarray(Image.open(path).convert("RGB"))
            x, m, valid = prepare_image(image, objects, S, sam.pixel_mean, sam.pixel_std)
            valid_tokens = F.avg_pool2d(valid.float()[:, None], patch)[:, 0] > 0  # (1, H/p, W/p)
            padding = ~valid_tokens
            for mode in layers:
                encoder.routing = mode
                _, aux = encoder.forward_with_aux(x.to(device), keep_ratio)
                layers[mode].append(torch.stack([a.selected.cpu() for a in aux.layers]))
            scores = gradient_energy(x, patch)  # (1, H/p, W/p)
            picks = [select_top(scores, keep_ratio, win, padding) for win in windows]
            heuristic.append(torch.stack(picks))  # (L, 1, H/p, W/p)
            covers.append(object_coverage(m, patch))  # (1, H/p, W/p)
            valids.append(valid_tokens)
    finally:
        encoder.routing = "learned"
        torch.random.set_rng_state(generator_state)
    cover, valid_all = torch.cat(covers), torch.cat(valids)  # (N, H/p, W/p)
    return {
        "learned": capacity_share(torch.cat(layers["learned"], dim=1), cover, valid_all),
        "random": capacity_share(torch.cat(layers["random"], dim=1), cover, valid_all),
        "gradient energy (training-free)": capacity_share(
            torch.cat(heuristic, dim=1), cover, valid_all
        ),
    }
