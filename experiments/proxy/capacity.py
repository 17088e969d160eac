"""Where the big blocks' capacity went: on objects, or on the background.

Routing pays off when the tokens that skip the big blocks are the unimportant ones. In an image
where objects cover a minority of the area, a router that spends capacity on objects out of
proportion to their area has learned that; a random router spends it in proportion. The statistic
(the "heat map statistic"):

- **capacity on objects**: of all the tokens the big blocks updated (over layers and images), the
  share that lies on objects, each token weighted by the share of its patch that objects cover;
- **object share**: the share of the image's tokens that objects cover, weighted the same way;
- **enrichment**: the first over the second (1: no better than random, above 1: object-seeking).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .routing import check_patches

__all__ = ["CapacityShare", "capacity_share", "object_coverage"]


@dataclass(frozen=True)
class CapacityShare:
    """The share of big-block capacity spent on objects against the objects' share of the image."""

    capacity_on_objects: float  # share of the routed tokens that lie on objects
    object_share: float  # share of the image's (valid) tokens that lie on objects
    routed_tokens: int  # routed tokens counted, over layers and images

    @property
    def enrichment(self) -> float:
        """``capacity_on_objects / object_share``; nan for an image without objects."""
        if self.object_share == 0:
            return math.nan
        return self.capacity_on_objects / self.object_share


def object_coverage(masks: Tensor, patch_size: int) -> Tensor:
    """The share of each token's patch that objects cover.

    Arguments:
      masks: B x H x W (bool or 0..1), the union of an image's object masks, at the encoder's input
        resolution (H and W multiples of ``patch_size``).
      patch_size: the side of a token's patch in pixels.

    Returns:
      B x H/p x W/p in [0, 1] (fp32).
    """
    if masks.dim() != 3:
        raise ValueError(f"masks must be B x H x W, got shape {tuple(masks.shape)}")
    check_patches(masks.shape[-2:], patch_size, "masks")
    return F.avg_pool2d(masks.float()[:, None], patch_size)[:, 0]  # (B, H / p, W / p)


def capacity_share(
    selected: Union[Tensor, Sequence[Tensor]],
    coverage: Tensor,
    valid: Optional[Tensor] = None,
) -> CapacityShare:
    """How much of the big blocks' capacity went to objects, against their share of the image.

    Arguments:
      selected: B x H x W bool, the tokens one layer sent to its big block; or one such tensor
        per layer (``LayerRouting.selected`` of the encoder's aux), or L x B x H x W.
      coverage: B x H x W in [0, 1], the share of each token's patch on objects
        (:func:`object_coverage`).
      valid: optional B x H x W bool, the tokens of the image (False: padding); the object share
        counts these only. Routed padding tokens count as capacity spent off objects.

    Returns:
      The :class:`CapacityShare`.
    """
    if coverage.dim() != 3:
        raise ValueError(f"coverage must be B x H x W, got shape {tuple(coverage.shape)}")
    layers = torch.stack(list(selected)) if not isinstance(selected, Tensor) else selected
    if layers.dim() == 3:
        layers = layers[None]  # (1, B, H, W)
    if layers.dim() != 4 or layers.shape[1:] != coverage.shape:
        raise ValueError(
            f"selected must be B x H x W or L x B x H x W with B x H x W = "
            f"{tuple(coverage.shape)} (the coverage's), got {tuple(layers.shape)}"
        )
    if valid is not None and valid.shape != coverage.shape:
        raise ValueError(
            f"valid must have the coverage's shape {tuple(coverage.shape)}, got "
            f"{tuple(valid.shape)}"
        )
    cover = coverage.float()
    routed = layers.float()  # (L, B, H, W)
    count = int(routed.sum())
    if count == 0:
        raise ValueError("no token was selected: there is no capacity to share")
    on_objects = float((routed * cover[None]).sum()) / count
    weight = torch.ones_like(cover) if valid is None else valid.float()  # (B, H, W)
    tokens = float(weight.sum())
    object_share = float((cover * weight).sum()) / tokens if tokens else 0.0
    return CapacityShare(on_objects, object_share, count)
