"""Prompts drawn from ground-truth masks for training, and decoding them with SAM's own parts.

All coordinates are in the model's input frame (pixels of the resized, padded image), which is
what ``PromptEncoder`` expects. Masks here live at the decoder's low resolution (one pixel per
``stride`` x ``stride`` input pixels: 4 x 4 for SAM). Every random draw comes from a
``torch.Generator`` the caller seeds from the image's stream position, so prompts are the same in
every process, run and resume.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

__all__ = [
    "ImagePrompts",
    "batch_image_prompts",
    "PromptGroup",
    "cat_or_none",
    "mask_inputs",
    "decode_prompts",
    "point_from_mask",
    "jitter_boxes",
    "refinement_click",
    "random_split",
    "decoder_stride",
]


def decoder_stride(prompt_encoder: nn.Module) -> int:
    """Input pixels per side of one pixel of the decoder's low-resolution masks (4 for SAM)."""
    return int(prompt_encoder.input_image_size[0]) // int(prompt_encoder.mask_input_size[0])


def _uniform(shape: Tuple[int, ...], gen: torch.Generator, device: torch.device) -> Tensor:
    """U(0, 1) drawn on the CPU from ``gen`` (the same numbers on every device), then moved."""
    return torch.rand(shape, generator=gen).to(device)


def random_split(n: int, share: float, gen: torch.Generator, device: torch.device) -> Tensor:
    """(n,) bool: True with probability ``share`` (which instances get a point, not a box)."""
    return _uniform((n,), gen, device) < share


def _pick(region: Tensor, gen: torch.Generator) -> Tensor:
    """One pixel per mask, uniformly among the True pixels of ``region`` (K x h x w bool).

    A mask with no True pixel gets its (0, 0). Returns K flat indices (row * w + col).
    """
    K, h, w = region.shape
    u = _uniform((K, h, w), gen, region.device)
    score = torch.where(region, u, torch.full_like(u, -1.0))  # (K, h, w)
    return score.flatten(1).argmax(dim=1)  # (K,)


def _to_input_xy(flat: Tensor, width: int, stride: int) -> Tensor:
    """K flat low-resolution indices -> K x 2 (x, y) input pixels at each cell's centre."""
    rows = torch.div(flat, width, rounding_mode="floor")
    cols = flat - rows * width
    xy = torch.stack([cols, rows], dim=-1).float()  # (K, 2)
    return xy * stride + (stride - 1) / 2


def point_from_mask(targets: Tensor, gen: torch.Generator, stride: int) -> Tensor:
    """A positive click inside each object, uniform over its mask.

    Arguments:
      targets: K x h x w soft masks in [0, 1] (the valid region only).
      gen: the image's generator.
      stride: input pixels per mask pixel (:func:`decoder_stride`).

    Returns:
      K x 2 (x, y) in input pixels. An object with no pixel above 0.5 gets its strongest pixel.
    """
    inside = targets >= 0.5  # (K, h, w)
    empty = ~inside.flatten(1).any(dim=1)  # (K,)
    if bool(empty.any()):
        strongest = targets.flatten(1).argmax(dim=1)  # (K,)
        fill = torch.zeros_like(inside).flatten(1)
        fill[torch.arange(len(fill), device=fill.device), strongest] = True
        inside = torch.where(empty[:, None, None], fill.view_as(inside), inside)
    return _to_input_xy(_pick(inside, gen), targets.shape[-1], stride)


def jitter_boxes(
    boxes: Tensor, input_size: Tuple[int, int], img_size: int, gen: torch.Generator
) -> Tensor:
    """SAM's box noise: each coordinate moves by N(0, (0.1 x box side)^2), at most 20 px at 1024.

    Arguments:
      boxes: K x 4 (x0, y0, x1, y1) input pixels.
      input_size: (h', w'), to clip to the image.
      img_size: S, the input side (the 20 px cap scales with it).

    Returns:
      K x 4 noisy boxes inside the image, with x1 > x0 and y1 > y0.
    """
    K = boxes.shape[0]
    noise = torch.randn((K, 4), generator=gen).to(boxes.device)
    side = torch.stack(
        [boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]] * 2, dim=1
    )  # (K, 4): w, h, w, h
    cap = 20.0 * img_size / 1024.0
    delta = (noise * 0.1 * side).clamp(-cap, cap)
    out = boxes + delta
    h, w = input_size
    x0 = out[:, 0].clamp(0, w - 1)
    y0 = out[:, 1].clamp(0, h - 1)
    x1 = torch.maximum(out[:, 2].clamp(0, w), x0 + 1)
    y1 = torch.maximum(out[:, 3].clamp(0, h), y0 + 1)
    return torch.stack([x0, y0, x1, y1], dim=1)  # (K, 4)


def refinement_click(
    pred: Tensor, target: Tensor, gen: torch.Generator, stride: int
) -> Tuple[Tensor, Tensor]:
    """A correcting click drawn uniformly from the error region, as in SAM's training.

    Arguments:
      pred: K x h x w bool current masks (the valid region).
      target: K x h x w bool target masks.
      gen: the image's generator.
      stride: input pixels per mask pixel.

    Returns:
      coords: K x 1 x 2 (x, y) input pixels; labels: K x 1 (1 where the click lies in a false
      negative, 0 in a false positive). A mask without error gets a positive click inside the
      target (or anywhere when the target is empty too, labelled by the target).
    """
    error = pred != target  # (K, h, w)
    none = ~error.flatten(1).any(dim=1)  # (K,)
    region = torch.where(none[:, None, None], target, error)
    flat = _pick(region, gen)  # (K,)
    labels = target.flatten(1).gather(1, flat[:, None]).long()  # (K, h*w) -> (K, 1)
    coords = _to_input_xy(flat, target.shape[-1], stride).unsqueeze(1)  # (K, 1, 2)
    return coords, labels


def decode_prompts(
    prompt_encoder: nn.Module,
    mask_decoder: nn.Module,
    embedding: Tensor,
    coords: Optional[Tensor],
    labels: Optional[Tensor],
    boxes: Optional[Tensor],
    mask_input: Optional[Tensor],
    multimask: bool,
    mask_rows: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor]:
    """SAM's prompt encoder and mask decoder on K prompts, with gradients.

    (``Sam.forward`` runs under ``no_grad``, so training calls the parts.) The prompts may come
    from several images: ``embedding`` then holds one row per prompt, and the decoder runs once
    for all of them (one call instead of one per image: training steps are dominated by these
    calls at small sizes). SAM's decoder adds the dense prompt embedding to the image embedding
    it repeats per prompt; per-prompt embeddings go in through that sum (the repeated image
    embedding is zero), which gives exactly the numbers of one call per image.

    Arguments:
      embedding: 1 x C x g x g image embedding shared by the K prompts, or K x C x g x g (the
        embedding of each prompt's image).
      coords: K x n x 2 input pixels, with labels K x n (1 positive, 0 negative), or None.
      boxes: K x 4 input pixels, or None.
      mask_input: K x 1 x 4g x 4g low-resolution logits from a previous round, or None.
      multimask: three outputs (for an ambiguous prompt) instead of one.
      mask_rows: K bool, the prompts that use ``mask_input`` (the others get SAM's no-mask
        embedding, as with ``mask_input`` None); None: all of them.

    Returns:
      logits: K x m x 4g x 4g low-resolution mask logits (m = 3 or 1); iou: K x m predicted IoU.
    """
    points = (coords, labels) if coords is not None else None
    masks = mask_input if mask_rows is None else None
    sparse, dense = prompt_encoder(points=points, boxes=boxes, masks=masks)  # dense (K, C, g, g)
    if mask_input is not None and mask_rows is not None:
        embedded = prompt_encoder._embed_masks(mask_input)  # (K, C, g, g)
        dense = torch.where(mask_rows[:, None, None, None], embedded, dense)
    image = embedding
    if embedding.shape[0] > 1:
        if embedding.shape[0] != sparse.shape[0]:
            raise ValueError(
                f"{embedding.shape[0]} image embeddings for {sparse.shape[0]} prompts: give one "
                "shared embedding or one per prompt"
            )
        dense = dense + embedding  # (K, C, g, g): the decoder adds its repeated image to this
        image = embedding.new_zeros((1,) + tuple(embedding.shape[1:]))  # (1, C, g, g)
    logits, iou = mask_decoder(
        image_embeddings=image,
        image_pe=prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
    )
    return logits, iou


def cat_or_none(parts: List[Optional[Tensor]]) -> Optional[Tensor]:
    """The groups' prompts of one kind concatenated along the prompt axis, or None when the groups
    have none of that kind (every group of a prompt type has the same kinds)."""
    return None if parts[0] is None else torch.cat(parts)  # type: ignore[arg-type]


def per_prompt(embeddings: Tensor, groups: List["PromptGroup"]) -> Tensor:
    """Each prompt's image embedding: B x C x g x g -> K x C x g x g, K = the groups' objects in
    order (expanded views, no copy until the concatenation)."""
    # (K, C, g, g): group g's image row repeated once per object
    return torch.cat([embeddings[g.b : g.b + 1].expand(g.k, -1, -1, -1) for g in groups])


def mask_inputs(
    groups: List["PromptGroup"], prompt_encoder: nn.Module
) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    """The previous round's logits of the groups that feed them back: (K x 1 x 4g x 4g, K bool),
    or (None, None) when none does (zeros stand in for the rows that do not)."""
    if all(g.mask_input is None for g in groups):
        return None, None
    side = tuple(int(v) for v in prompt_encoder.mask_input_size)
    pieces, rows = [], []
    for g in groups:
        m = g.mask_input
        ref = g.targets
        pieces.append(m if m is not None else ref.new_zeros((g.k, 1) + side))  # (k, 1, 4g, 4g)
        rows.append(torch.full((g.k,), m is not None, dtype=torch.bool, device=ref.device))
    return torch.cat(pieces), torch.cat(rows)


class PromptGroup:
    """One image's objects of one prompt type while their click rounds run."""

    def __init__(
        self,
        b: int,
        gen: torch.Generator,
        targets: Tensor,
        coords: Optional[Tensor],
        labels: Optional[Tensor],
        box: Optional[Tensor],
    ) -> None:
        self.b, self.gen, self.targets = b, gen, targets  # targets: k x vh x vw
        self.k = int(targets.shape[0])
        self.coords, self.labels, self.box = coords, labels, box  # k x n x 2, k x n, k x 4
        self.mask_input: Optional[Tensor] = None  # k x 1 x 4g x 4g

    def add_click(self, pred: Tensor, target: Tensor, stride: int) -> None:
        """Add a click drawn from where ``pred`` and ``target`` (k x vh x vw bool) disagree
        (:func:`refinement_click`, from this image's generator) to every earlier prompt."""
        click, label = refinement_click(pred, target, self.gen, stride)  # (k, 1, 2), (k, 1)
        if self.coords is None or self.labels is None:
            self.coords, self.labels = click, label
        else:
            self.coords = torch.cat([self.coords, click], dim=1)  # (k, n + 1, 2)
            self.labels = torch.cat([self.labels, label], dim=1)  # (k, n + 1)

    def refine(self, chosen: Tensor, mask_input_prob: float, stride: int) -> None:
        """Add a click from the error region of ``chosen`` (k x 4g x 4g logits), and maybe feed
        the logits back."""
        vh, vw = self.targets.shape[-2:]
        self.add_click(chosen[:, :vh, :vw] > 0, self.targets >= 0.5, stride)
        # SAM feeds the previous logits back; evaluations (and many users) give only the clicks,
        # so some rounds train that case too.
        with_mask = bool(torch.rand((), generator=self.gen) < mask_input_prob)
        self.mask_input = chosen.unsqueeze(1).detach() if with_mask else None  # (k, 1, 4g, 4g)


class ImagePrompts:
    """One image of a batch: its generator, targets and the split into point and box prompts."""

    def __init__(
        self,
        b: int,
        gen: torch.Generator,
        input_size: Tuple[int, int],
        targets: Tensor,
        boxes: Tensor,
        use_point: Tensor,
    ) -> None:
        self.b, self.gen, self.input_size = b, gen, input_size
        self.targets, self.boxes, self.use_point = targets, boxes, use_point

    def group(self, point_group: bool, img_size: int, stride: int) -> Optional[PromptGroup]:
        """The objects prompted by a point (or by a box), with their first prompt; None if none."""
        idx = torch.nonzero(self.use_point == point_group).flatten()  # (k,)
        if idx.numel() == 0:
            return None
        t = self.targets[idx]  # (k, vh, vw)
        if point_group:
            coords = point_from_mask(t, self.gen, stride).unsqueeze(1)  # (k, 1, 2)
            labels = torch.ones(t.shape[0], 1, dtype=torch.long, device=t.device)
            return PromptGroup(self.b, self.gen, t, coords, labels, None)
        box = jitter_boxes(self.boxes[idx], self.input_size, img_size, self.gen)  # (k, 4)
        return PromptGroup(self.b, self.gen, t, None, None, box)


def batch_image_prompts(
    batch: Dict[str, Any], point_prob: float, stride: int
) -> List[ImagePrompts]:
    """Each readable image of a training batch that has objects, with its own generator (seeded by
    its stream position) and its split of objects into point and box prompts.

    Arguments:
      batch: from ``collate_items``: ``masks`` B x K x 4g x 4g, ``boxes`` B x K x 4,
        ``instances`` B x K, ``input_size`` B x 2, ``ok`` B, ``seed`` B.
      point_prob: share of objects prompted by a point rather than a box.
      stride: input pixels per mask pixel (:func:`decoder_stride`).
    """
    images: List[ImagePrompts] = []
    for b in range(int(batch["ok"].shape[0])):
        n = int(batch["instances"][b].sum())
        if n == 0 or not bool(batch["ok"][b]):
            continue
        gen = torch.Generator().manual_seed(int(batch["seed"][b]))
        h, w = (int(v) for v in batch["input_size"][b])
        vh, vw = -(-h // stride), -(-w // stride)
        targets = batch["masks"][b, :n, :vh, :vw]  # (n, vh, vw): the part the image covers
        use_point = random_split(n, point_prob, gen, targets.device)  # (n,)
        images.append(ImagePrompts(b, gen, (h, w), targets, batch["boxes"][b, :n], use_point))
    return images
