"""Turning whatever a user uploads into the H x W x 3 uint8 RGB array SAM expects.

Photographs come in many modes (grayscale, 16-bit, CMYK, palette, with alpha, rotated by EXIF);
every one is converted here, and anything that cannot be read becomes an :class:`ImageLoadError`
whose message names the file and the problem, never a traceback.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Tuple, Union

import cv2
import numpy as np
from PIL import Image, ImageOps

__all__ = ["ImageLoadError", "LoadedImage", "MAX_SIDE", "load_image", "normalize_image"]

MAX_SIDE = 4096  # longest side encoded; SAM resizes to 1024 anyway, this bounds memory and latency
PathLike = Union[str, os.PathLike]


class ImageLoadError(ValueError):
    """An upload that is not a readable image."""


@dataclass
class LoadedImage:
    """An image ready for the demo.

    Attributes:
      rgb: H x W x 3 uint8, at most ``MAX_SIDE`` on the long side.
      original_size: (H, W) of the uploaded file; downloads are written at this size.
      notes: what was converted or resized, shown to the user.
      name: the file's stem, used to name downloads.
    """

    rgb: np.ndarray
    original_size: Tuple[int, int]
    notes: List[str] = field(default_factory=list)
    name: str = "image"


def _to_8bit(values: np.ndarray) -> np.ndarray:
    """Scale a high-bit-depth or float array into 0..255."""
    is_float = values.dtype.kind == "f"
    values = values.astype(np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(values.shape, dtype=np.uint8)
    values = np.where(finite, values, 0.0)
    low, high = float(values[finite].min()), float(values[finite].max())
    if is_float and low >= 0.0 and high <= 1.0:
        scaled = values * 255.0  # float images in 0..1
    elif low >= 0 and high <= 255:
        scaled = values
    elif low >= 0 and high <= 65535:
        scaled = values / 257.0  # 16-bit: 65535 -> 255
    else:
        scaled = (values - low) / max(high - low, 1e-12) * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _pil_to_rgb(image: Image.Image, notes: List[str]) -> np.ndarray:
    mode = image.mode
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        notes.append(
            f"{'32-bit float' if mode == 'F' else '16-bit'} grayscale image scaled to 8 bits"
        )
        gray = _to_8bit(np.asarray(image))
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        notes.append("transparency composited onto a white background")
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    if mode not in ("RGB", "P"):  # a palette without transparency converts losslessly: no note
        readable = {"L": "grayscale", "1": "black-and-white", "CMYK": "CMYK"}
        notes.append(f"{readable.get(mode, mode)} image converted to RGB")
    return np.asarray(image.convert("RGB"))


def normalize_image(
    image: Union[np.ndarray, Image.Image], name: str = "image", max_side: int = MAX_SIDE
) -> LoadedImage:
    """Convert a PIL image or an H x W (x 1/3/4) array of any dtype to a :class:`LoadedImage`."""
    notes: List[str] = []
    if isinstance(image, Image.Image):
        rgb = _pil_to_rgb(image, notes)
    else:
        array = np.asarray(image)
        if array.ndim == 3 and array.shape[2] == 1:
            array = array[:, :, 0]
        if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
            raise ImageLoadError(
                f"{name}: expected an H x W or H x W x 3/4 image, got shape {array.shape}"
            )
        if array.dtype != np.uint8:
            notes.append(f"{array.dtype} pixel values scaled to 8 bits")
            array = _to_8bit(array)
        if array.ndim == 2:
            notes.append("grayscale image converted to RGB")
            array = np.repeat(array[:, :, None], 3, axis=2)
        elif array.shape[2] == 4:
            notes.append("transparency composited onto a white background")
            alpha = array[:, :, 3:4].astype(np.float32) / 255.0
            array = np.rint(array[:, :, :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
        rgb = array
    height, width = rgb.shape[:2]
    if min(height, width) < 1:
        raise ImageLoadError(f"{name}: the image is empty ({width} x {height} pixels)")
    if max(height, width) > max_side:
        scale = max_side / max(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        notes.append(
            f"large image ({width} x {height}) downscaled to {size[0]} x {size[1]} for encoding; "
            "downloads are written at the original size"
        )
    return LoadedImage(np.ascontiguousarray(rgb), (height, width), notes, name)


def load_image(path: PathLike, max_side: int = MAX_SIDE) -> LoadedImage:
    """Read an image file (any mode Pillow reads), apply EXIF rotation, convert and bound its size.

    Raises:
      ImageLoadError: the file is missing, not an image, truncated, or unreasonably large.
    """
    path = Path(path)
    name = path.stem or "image"
    try:
        with warnings.catch_warnings():
            # Up to Pillow's hard limit (~179 Mpx) a large photo is fine: it is downscaled below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                opened.load()
                image = ImageOps.exif_transpose(opened) or opened
                loaded = normalize_image(image, name, max_side)
    except FileNotFoundError:
        raise ImageLoadError(f"{path.name}: file not found") from None
    except Image.DecompressionBombError:
        raise ImageLoadError(
            f"{path.name}: the image has too many pixels to open safely (limit "
            f"{Image.MAX_IMAGE_PIXELS:,} pixels)"
        ) from None
    except Image.UnidentifiedImageError:
        raise ImageLoadError(
            f"{path.name}: not an image file, or a format the demo does not read (it reads PNG, "
            "JPEG, TIFF, WebP, BMP, GIF, ...)"
        ) from None
    except (OSError, SyntaxError, ValueError) as e:
        if isinstance(e, ImageLoadError):
            raise
        raise ImageLoadError(f"{path.name}: the image is corrupt or truncated ({e})") from None
    return loaded
