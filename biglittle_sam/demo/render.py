"""Drawing the canvas: mask overlays, prompt markers, the compute heat map, segment-everything."""

from __future__ import annotations

import colorsys
import math
from typing import Any, Dict, List, Sequence, Tuple

import cv2
import numpy as np

from .prompts import PromptSet

__all__ = [
    "MASK_COLOURS",
    "display_scale",
    "distinct_colours",
    "draw_everything",
    "draw_heat",
    "draw_mask",
    "draw_prompts",
    "pad_for_display",
    "resize_for_display",
]

# (R, G, B): blue for the main mask, then the rest of a colour-blind-friendly palette.
MASK_COLOURS: Tuple[Tuple[int, int, int], ...] = (
    (30, 144, 255),
    (255, 140, 0),
    (46, 204, 113),
    (220, 20, 160),
)
POSITIVE = (0, 200, 70)
NEGATIVE = (230, 30, 30)
BOX = (255, 215, 0)
SMALL_SIDE = 768  # small images are enlarged to this long side, so clicks land where intended
LARGE_SIDE = 1024  # large ones are shrunk to it, so each update sends a small picture
MAX_ASPECT = 4.0  # longer and thinner canvases are padded: a 4000 x 50 photo stays clickable
PAD = (38, 38, 46)  # the padding: a dark grey that no mask colour uses


def display_scale(height: int, width: int) -> float:
    """Factor from encoded-image pixels to canvas pixels."""
    side = max(height, width)
    if side < SMALL_SIDE:
        return SMALL_SIDE / side
    if side > LARGE_SIDE:
        return LARGE_SIDE / side
    return 1.0


def resize_for_display(image: np.ndarray, scale: float) -> np.ndarray:
    """Resize H x W (x C) to the canvas: nearest when enlarging (crisp), area when shrinking."""
    if scale == 1.0:
        return image.copy()
    h, w = image.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    mode = cv2.INTER_NEAREST if scale > 1 else cv2.INTER_AREA
    if image.dtype == bool:
        return cv2.resize(image.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
    return cv2.resize(image, size, interpolation=mode)


def pad_for_display(canvas: np.ndarray, max_aspect: float = MAX_ASPECT) -> np.ndarray:
    """Pad an H x W x 3 canvas at the bottom or right to at most ``max_aspect`` : 1.

    A very long, thin image would otherwise be laid out as a strip a few pixels high under the
    image label. The padding is below or to the right, so canvas pixel (x, y) is still image pixel
    (x, y) / scale, and a click on the padding falls outside the image.
    """
    h, w = canvas.shape[:2]
    height = max(h, math.ceil(w / max_aspect))
    width = max(w, math.ceil(h / max_aspect))
    if (height, width) == (h, w):
        return canvas
    out = np.empty((height, width) + canvas.shape[2:], dtype=canvas.dtype)
    out[...] = np.array(PAD, dtype=canvas.dtype)[: canvas.shape[2]] if canvas.ndim == 3 else 0
    out[:h, :w] = canvas
    return out


def _fit(mask: np.ndarray, shape: Tuple[int, int]) -> np.ndarray:
    if mask.shape[:2] == shape:
        return mask
    resized = cv2.resize(mask.astype(np.uint8), (shape[1], shape[0]), cv2.INTER_NEAREST)
    return resized > 0


def draw_mask(
    canvas: np.ndarray,
    mask: np.ndarray,
    colour: Sequence[int] = MASK_COLOURS[0],
    alpha: float = 0.5,
    outline: bool = True,
) -> np.ndarray:
    """Blend ``mask`` (H x W bool, any size; resized to the canvas) onto an RGB uint8 canvas."""
    mask = _fit(mask, canvas.shape[:2])
    out = canvas.copy()
    colour_arr = np.array(colour, dtype=np.float32)
    out[mask] = np.rint(out[mask] * (1 - alpha) + colour_arr * alpha).astype(np.uint8)
    if outline:
        contours, _ = cv2.findContours(
            mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
        )
        cv2.drawContours(out, contours, -1, tuple(int(c) for c in colour), 2)
    return out


def draw_heat(canvas: np.ndarray, usage: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """Blend a [0, 1] usage map (share of layers on the big path) as an inferno colour map."""
    usage = usage.astype(np.float32)
    if usage.shape[:2] != canvas.shape[:2]:
        usage = cv2.resize(usage, (canvas.shape[1], canvas.shape[0]), cv2.INTER_LINEAR)
    levels = np.clip(np.rint(usage * 255), 0, 255).astype(np.uint8)
    heat = cv2.cvtColor(cv2.applyColorMap(levels, cv2.COLORMAP_INFERNO), cv2.COLOR_BGR2RGB)
    return np.rint(canvas * (1 - alpha) + heat * alpha).astype(np.uint8)


def distinct_colours(n: int) -> List[Tuple[int, int, int]]:
    """``n`` well-separated colours (golden-ratio hue steps, alternating brightness)."""
    colours = []
    for i in range(n):
        hue = (i * 0.618033988749895) % 1.0
        r, g, b = colorsys.hsv_to_rgb(hue, 0.75, 1.0 if i % 2 == 0 else 0.8)
        colours.append((int(r * 255), int(g * 255), int(b * 255)))
    return colours


def draw_everything(
    canvas: np.ndarray, masks: List[Dict[str, Any]], alpha: float = 0.55
) -> np.ndarray:
    """Paint ``SamAutomaticMaskGenerator`` masks (largest first, so small ones stay visible)."""
    out = canvas.copy()
    for record, colour in zip(masks, distinct_colours(len(masks))):
        out = draw_mask(out, record["segmentation"], colour, alpha, outline=True)
    return out


def draw_prompts(canvas: np.ndarray, prompts: PromptSet, scale: float) -> np.ndarray:
    """Draw points (green positive, red negative), the active box and a pending corner."""
    out = canvas.copy()
    radius = max(5, round(min(out.shape[:2]) / 80))
    box = prompts.box
    if box is not None:
        p0 = (round(box.x0 * scale), round(box.y0 * scale))
        p1 = (round(box.x1 * scale), round(box.y1 * scale))
        cv2.rectangle(out, p0, p1, (0, 0, 0), 4)
        cv2.rectangle(out, p0, p1, BOX, 2)
    if prompts.pending_corner is not None:
        cx, cy = (round(v * scale) for v in prompts.pending_corner)
        arm = radius * 2
        for colour, width in (((0, 0, 0), 4), (BOX, 2)):
            cv2.line(out, (cx - arm, cy), (cx + arm, cy), colour, width)
            cv2.line(out, (cx, cy - arm), (cx, cy + arm), colour, width)
    for point in prompts.points:
        centre = (round(point.x * scale), round(point.y * scale))
        colour = POSITIVE if point.positive else NEGATIVE
        cv2.circle(out, centre, radius + 2, (255, 255, 255), -1, cv2.LINE_AA)
        cv2.circle(out, centre, radius, colour, -1, cv2.LINE_AA)
        if not point.positive:  # a minus sign, so the two kinds differ without colour
            cv2.line(
                out,
                (centre[0] - radius + 2, centre[1]),
                (centre[0] + radius - 2, centre[1]),
                (255, 255, 255),
                2,
            )
    return out
