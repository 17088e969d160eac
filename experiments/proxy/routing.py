"""Training-free routers for the proxy benchmark: what a heuristic picks, to compare learning with.

A learned router has to beat random routing, and it should also beat a heuristic that needs no
training. Two such heuristics score each token of the grid:

- :func:`gradient_energy`: how much the image changes inside the token's patch (edges and texture);
- :func:`token_norm`: how far a token's features lie from the image's mean token.

:func:`select_top` turns any scores into the tokens the big blocks would update, with the encoder's
static capacities (``ceil(r * group)`` per window, edge windows by their real tokens, padding last),
so a heuristic's choice can be scored with :func:`~.capacity.capacity_share`.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from biglittle_sam.config import capacity, validate_keep_ratio, window_capacities

__all__ = ["check_patches", "gradient_energy", "select_top", "token_norm"]


def check_patches(size: Sequence[int], patch_size: int, what: str) -> None:
    """ValueError unless a ``size`` = (H, W) pixel grid tiles into ``patch_size`` patches."""
    H, W = size
    if patch_size < 1 or H % patch_size or W % patch_size:
        raise ValueError(
            f"{what} of {H} x {W} px do not tile into {patch_size} px patches; the image size "
            "must be a multiple of the patch size"
        )


def gradient_energy(images: Tensor, patch_size: int) -> Tensor:
    """Mean squared image gradient of each patch.

    The gradient is the forward difference of the channel mean, along rows and columns; the last
    row and column have none across the image border.

    Arguments:
      images: B x C x H x W, H and W multiples of ``patch_size``.
      patch_size: the side of a token's patch in pixels.

    Returns:
      B x H/p x W/p, one score per token (fp32, >= 0).
    """
    if images.dim() != 4:
        raise ValueError(f"images must be B x C x H x W, got shape {tuple(images.shape)}")
    check_patches(images.shape[-2:], patch_size, "images")
    gray = images.float().mean(dim=1, keepdim=True)  # (B, 1, H, W)
    dx = gray[..., :, 1:] - gray[..., :, :-1]  # (B, 1, H, W - 1)
    dy = gray[..., 1:, :] - gray[..., :-1, :]  # (B, 1, H - 1, W)
    energy = F.pad(dx.square(), (0, 1)) + F.pad(dy.square(), (0, 0, 0, 1))  # (B, 1, H, W)
    return F.avg_pool2d(energy, patch_size).squeeze(1)  # (B, H / p, W / p)


def token_norm(tokens: Tensor) -> Tensor:
    """Distance of each token from its image's mean token, ``||x - mean(x)||``.

    The mean is taken away so that what every token shares (a bias, the average background) does
    not decide the order.

    Arguments:
      tokens: B x H x W x C features (for example after the patch embedding).

    Returns:
      B x H x W (fp32).
    """
    if tokens.dim() != 4:
        raise ValueError(f"tokens must be B x H x W x C, got shape {tuple(tokens.shape)}")
    x = tokens.float()
    mean = x.mean(dim=(1, 2), keepdim=True)  # (B, 1, 1, C)
    return (x - mean).norm(dim=-1)  # (B, H, W)


def select_top(
    scores: Tensor, keep_ratio: float, window_size: int = 0, padding: Optional[Tensor] = None
) -> Tensor:
    """The tokens a layer with these scores sends to its big block, with the encoder's capacities.

    A global layer (``window_size`` 0) takes the top ``ceil(r * H * W)`` of the grid. A windowed
    layer tiles the grid with ``window_size`` windows from the top left, as SAM pads it; each window
    takes the top ``capacity(r, its real tokens)``
    (:func:`~biglittle_sam.config.window_capacities`). Tokens where ``padding`` is True (the image's
    padding, not the grid's) are taken only when their group has nothing else.

    Arguments:
      scores: B x H x W, higher is more important.
      keep_ratio: in (0, 1].
      window_size: the layer's window side, or 0 for a global layer.
      padding: optional B x H x W bool.

    Returns:
      B x H x W bool, True for the selected tokens.
    """
    if scores.dim() != 3:
        raise ValueError(f"scores must be B x H x W, got shape {tuple(scores.shape)}")
    if padding is not None and padding.shape != scores.shape:
        raise ValueError(
            f"padding must have the scores' shape {tuple(scores.shape)}, got {tuple(padding.shape)}"
        )
    if window_size < 0:
        raise ValueError(f"window_size must be >= 0 (0: a global layer), got {window_size}")
    ratio = validate_keep_ratio(keep_ratio)
    B, H, W = scores.shape
    ranked = scores.float()
    if padding is not None:  # below every real token, still in its own order
        ranked = ranked - padding.float() * (ranked.abs().max() * 2 + 1)
    selected = torch.zeros(B, H, W, dtype=torch.bool, device=scores.device)
    if window_size == 0:
        top = ranked.reshape(B, H * W).topk(capacity(ratio, H * W), dim=1).indices  # (B, k)
        selected.view(B, H * W).scatter_(1, top, True)  # (B, H * W)
        return selected
    caps = iter(window_capacities(ratio, (H, W), window_size))
    for i in range(0, H, window_size):
        for j in range(0, W, window_size):
            window = ranked[:, i : i + window_size, j : j + window_size]  # (B, h, w), edge: smaller
            h, w = window.shape[1:]
            top = window.reshape(B, h * w).topk(next(caps), dim=1).indices  # (B, k)
            chosen = torch.zeros(B, h * w, dtype=torch.bool, device=scores.device)
            chosen.scatter_(1, top, True)  # (B, h * w)
            selected[:, i : i + h, j : j + w] = chosen.view(B, h, w)
    return selected
