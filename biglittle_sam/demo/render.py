"""Drawing the canvas: mask overlays, prompt markers, the compute heat map, segment-everything."""

from __future__ import annotations

import colorsys
from typing import Any, Dict, List, Sequence, Tuple, Union

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
    "display_stretch",
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
MAX_ASPECT = 4.0  # longer and thinner images are stretched across: a 4000 x 50 photo is clickable


def display_scale(height: int, width: int) -> float:
    """Factor from encoded-image pixels to canvas pixels."""
    side = max(height, width)
    if side < SMALL_SIDE:
        return SMALL_SIDE / side
    if side > LARGE_SIDE:
        return LARGE_SIDE / side
    return 1.0


def display_stretch(height: int, width: int, scale: float) -> Tuple[float, float]:
    """Extra (x, y) factors that bring a very long, thin image to at most ``MAX_ASPECT`` : 1.

    A 4000 x 50 photo at 1024 px wide would be a 13 px strip; stretched across its short side it
    can be seen and clicked. Clicks map back through the same factors, and masks and downloads
    keep the image's true shape. (1, 1) for every other image.
    """
    h, w = height * scale, width * scale
    if w > MAX_ASPECT * h:
        return 1.0, w / (MAX_ASPECT * h)
    if h > MAX_ASPECT * w:
        return h / (MAX_ASPECT * w), 1.0
    return 1.0, 1.0


def resize_for_display(
    image: np.ndarray, scale: float, stretch: Tuple[float, float] = (1.0, 1.0)
) -> np.ndarray:
    """Resize H x W (x C) to the canvas, by ``scale`` times the (x, y) ``stretch``: nearest when
    enlarging (crisp), area when shrinking."""
    fx, fy = scale * stretch[0], scale * stretch[1]
    if fx == 1.0 and fy == 1.0:
        return image.copy()
    h, w = image.shape[:2]
    size = (max(1, round(w * fx)), max(1, round(h * fy)))
    if image.dtype == bool:
        return cv2.resize(image.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
    if fx >= 1 and fy >= 1:
        mode = cv2.INTER_NEAREST
    elif fx <= 1 and fy <= 1:
        mode = cv2.INTER_AREA
    else:
        mode = cv2.INTER_LINEAR
    return cv2.resize(image, size, interpolation=mode)


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


def draw_prompts(
    canvas: np.ndarray, prompts: PromptSet, scale: Union[float, Tuple[float, float]]
) -> np.ndarray:
    """Draw points (green positive, red negative), the active box and a pending corner, at
    canvas pixel = image pixel x ``scale`` (one factor, or (x, y) factors)."""
    sx, sy = (scale, scale) if isinstance(scale, (int, float)) else scale
    out = canvas.copy()
    radius = max(5, round(min(out.shape[:2]) / 80))
    box = prompts.box
    if box is not None:
        p0 = (round(box.x0 * sx), round(box.y0 * sy))
        p1 = (round(box.x1 * sx), round(box.y1 * sy))
        cv2.rectangle(out, p0, p1, (0, 0, 0), 4)
        cv2.rectangle(out, p0, p1, BOX, 2)
    if prompts.pending_corner is not None:
        cx, cy = round(prompts.pending_corner[0] * sx), round(prompts.pending_corner[1] * sy)
        arm = radius * 2
        for colour, width in (((0, 0, 0), 4), (BOX, 2)):
            cv2.line(out, (cx - arm, cy), (cx + arm, cy), colour, width)
            cv2.line(out, (cx, cy - arm), (cx, cy + arm), colour, width)
    for point in prompts.points:
        centre = (round(point.x * sx), round(point.y * sy))
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
