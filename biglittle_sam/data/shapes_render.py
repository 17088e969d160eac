"""Drawing the synthetic shapes dataset: what to draw (:class:`ShapesConfig`) and one image with
its exact instance masks (:func:`render_shapes_image`). :mod:`.shapes` writes the images and their
annotations.

Each image has a textured or noisy background and a few shapes (rectangles, ellipses, triangles,
stars, regular polygons, rings) of several sizes and colours that overlap. Shapes are painted in
order on a label map, so every instance's visible mask is exact: the pixels with its label. A
polygon shape's mask is pycocotools' rasterization of its polygon, so a reader that goes through
pycocotools gets back exactly the painted pixels.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ..runtime.cli import flag
from .masks import decode_rle

__all__ = [
    "CATEGORIES",
    "FORMATS",
    "SHAPE_KINDS",
    "ShapesConfig",
    "TOKEN_BINS",
    "background_shapes_config",
    "token_sized_shapes_config",
    "image_size_arg",
    "render_shapes_image",
]

SHAPE_KINDS = ("rectangle", "ellipse", "triangle", "star", "polygon", "ring")
POLYGON_KINDS = ("rectangle", "triangle", "star", "polygon")
# Category ids: one per shape kind, then the crowd dots and the one-pixel object.
CATEGORIES = [*SHAPE_KINDS, "dots", "pixel"]
FORMATS = ("coco", "lvis", "sa1b")


def image_size_arg(text: str) -> Tuple[int, int]:
    """``WIDTHxHEIGHT`` as (width, height), an argparse ``type``: a bad size is a usage error."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"image size {text!r} must be WIDTHxHEIGHT, e.g. 160x120"
        ) from None
    return w, h


@dataclass(frozen=True)
class ShapesConfig:
    """What :func:`make_shapes_dataset` writes; the defaults give a dataset a test reads quickly."""

    # Flags of biglittle-sam-make-shapes: every field but the shapes' extents and the backdrop.
    num_images: int = flag(8, "number of images")  # enough for every kind, size bin, aspect ratio
    seed: int = flag(0, "random seed")  # image i is drawn from default_rng([seed, i]) alone
    # (width, height) cycled over the images: landscape, portrait, square, wide; the larger ones
    # hold shapes above 96^2 pixels, the "large" COCO bin.
    sizes: Tuple[Tuple[int, int], ...] = flag(
        ((160, 120), (120, 160), (200, 200), (144, 96), (256, 192)),
        "image sizes, cycled over the images",
        type=image_size_arg,
        metavar="WxH",
    )
    min_shapes: int = flag(3, "shapes per image, at least")
    max_shapes: int = flag(7, "shapes per image, at most")
    min_extent: float = 6.0  # smallest shape side in pixels (the "small" bin is below 32^2 px)
    max_extent: float = 0.75  # largest shape side, as a share of the image's short side
    crowd_every: int = 3  # every n-th image (1, 1 + n, ...) gets one crowd region; 0 for none
    edge_cases: bool = True  # image 0 gets a one-pixel object and a shape cut by the corner
    formats: Tuple[str, ...] = flag(FORMATS, "formats to write", choices=FORMATS)
    detections: bool = True  # write a noisy-box detector's results for mask AP (needs "coco")
    # Masks are exact whatever the quality; only pixel colours change.
    jpeg_quality: int = flag(95, "JPEG quality")
    backdrop: bool = True  # the first shape is large and central (False: objects stay a minority)
    # Size bins of the non-backdrop shapes, ((share, min px, max px), ...): a shape draws its bin by
    # share, then its extent log-uniform in the bin (capped at the short side). Empty: one
    # log-uniform range, min_extent to max_extent (token_sized_shapes_config sets bins in tokens).
    extent_bins: Tuple[Tuple[float, float, float], ...] = ()

    def __post_init__(self) -> None:
        if self.num_images < 1:
            raise ValueError(f"num_images must be >= 1, got {self.num_images}")
        if not 1 <= self.min_shapes <= self.max_shapes:
            raise ValueError(
                f"need 1 <= min_shapes <= max_shapes, got {self.min_shapes}, {self.max_shapes}"
            )
        bad = [s for s in self.sizes if len(s) != 2 or min(s) < 16]
        if not self.sizes or bad:
            raise ValueError(f"sizes must be (width, height) pairs of at least 16 px, got {bad}")
        unknown = sorted(set(self.formats) - set(FORMATS))
        if unknown or not self.formats:
            raise ValueError(f"formats must be a non-empty subset of {FORMATS}, got {self.formats}")
        bad_bins = [b for b in self.extent_bins if len(b) != 3 or b[0] <= 0 or not 0 < b[1] <= b[2]]
        shares = sum(b[0] for b in self.extent_bins if len(b) == 3)
        if bad_bins or (self.extent_bins and abs(shares - 1) > 1e-6):
            raise ValueError(
                "extent_bins must be (share > 0, min px > 0, max px >= min) triples whose shares "
                f"sum to 1, got {self.extent_bins}"
            )


# Object sizes as SAM sees COCO, in tokens across (the bounding box's longer side): small 1-3,
# medium 3-10, large above, in COCO's proportions (41 / 34 / 25% of instances by count).
TOKEN_BINS = (("small", 0.41, 1.0, 3.0), ("medium", 0.34, 3.0, 10.0), ("large", 0.25, 10.0, None))


def token_sized_shapes_config(
    img_size: int, patch_size: int, num_images: int, seed: int
) -> ShapesConfig:
    """:func:`background_shapes_config` with objects sized in tokens of ``patch_size`` pixels as
    SAM sees COCO (:data:`TOKEN_BINS`; "large" up to the image's long side), 3-9 per image.

    Raises:
      ValueError: an image of fewer than 11 tokens across (no room for a large object).
    """
    if img_size // patch_size < 11:
        raise ValueError(
            f"token-sized shapes need at least 11 tokens across the image, got {img_size} px / "
            f"{patch_size} px patches = {img_size // patch_size}"
        )
    bins = tuple(
        (share, lo * patch_size, float(img_size) if hi is None else hi * patch_size)
        for _, share, lo, hi in TOKEN_BINS
    )
    base = background_shapes_config(img_size, num_images, seed)
    return dataclasses.replace(base, extent_bins=bins, min_shapes=3, max_shapes=9)


def background_shapes_config(img_size: int, num_images: int, seed: int) -> ShapesConfig:
    """Shapes that, like photographs, are mostly background (the proxy benchmark's images and the
    demo's examples): landscape, portrait, square and wide images whose long side is
    ``img_size``; 3-7 objects of 3 px up to 0.7 of the short side on a textured background, no
    backdrop shape, no crowd regions or edge cases, COCO format only."""
    s = img_size
    sizes = ((s, s * 3 // 4), (s * 3 // 4, s), (s, s), (s, s * 5 // 8))
    return ShapesConfig(
        num_images=num_images,
        seed=seed,
        sizes=sizes,
        min_shapes=3,
        max_shapes=7,
        min_extent=3.0,
        max_extent=0.7,
        crowd_every=0,
        edge_cases=False,
        formats=("coco",),
        detections=False,
        backdrop=False,
    )


@dataclass
class _Shape:
    kind: str
    category_id: int
    full: np.ndarray  # H x W bool: the whole shape as painted
    polygon: Optional[List[float]]  # flat [x1, y1, ...] when the shape is defined by one
    crowd: bool = False


def _polygon_mask(flat: List[float], height: int, width: int) -> np.ndarray:
    """The H x W bool mask pycocotools rasterizes a flat polygon to (the polygon's definition)."""
    from pycocotools import mask as mask_utils  # lazy: pycocotools is optional (extra "eval")

    return decode_rle(mask_utils.merge(mask_utils.frPyObjects([flat], height, width)))


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """H x W x 3 float in 0..255: noise, stripes, a checkerboard or a gradient, plus noise."""
    kind = int(rng.integers(4))
    c1 = rng.uniform(0, 255, size=3)
    c2 = rng.uniform(0, 255, size=3)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    if kind == 0:
        mix = np.zeros((height, width))
    elif kind == 1:
        theta = rng.uniform(0, math.pi)
        period = rng.uniform(6, 24)
        mix = 0.5 + 0.5 * np.sin(
            2 * math.pi * (xx * math.cos(theta) + yy * math.sin(theta)) / period
        )
    elif kind == 2:
        cell = int(rng.integers(6, 20))
        mix = ((xx // cell + yy // cell) % 2).astype(np.float64)
    else:
        mix = (xx / max(width - 1, 1) + yy / max(height - 1, 1)) / 2
    image = c1 * (1 - mix[..., None]) + c2 * mix[..., None]
    return image + rng.normal(0, rng.uniform(4, 30), size=image.shape)


def _polygon_vertices(
    rng: np.random.Generator, kind: str, cx: float, cy: float, extent: float
) -> np.ndarray:
    """N x 2 vertices (x, y) of a polygon shape of about ``extent`` pixels across."""
    r = extent / 2
    angle = rng.uniform(0, 2 * math.pi)
    if kind == "rectangle":
        aspect = rng.uniform(0.35, 1.0)
        pts = np.array([[-r, -r * aspect], [r, -r * aspect], [r, r * aspect], [-r, r * aspect]])
    elif kind == "triangle":
        a = angle + np.array([0.0, 2.1, 4.2]) + rng.uniform(-0.3, 0.3, size=3)
        return np.stack([cx + r * np.cos(a), cy + r * np.sin(a)], axis=1)
    elif kind == "star":
        a = angle + np.arange(10) * math.pi / 5
        radius = np.where(np.arange(10) % 2 == 0, r, r * rng.uniform(0.35, 0.6))
        return np.stack([cx + radius * np.cos(a), cy + radius * np.sin(a)], axis=1)
    else:
        n = int(rng.integers(5, 9))
        a = angle + np.arange(n) * 2 * math.pi / n
        return np.stack([cx + r * np.cos(a), cy + r * np.sin(a)], axis=1)
    c, s = math.cos(angle), math.sin(angle)
    rot = pts @ np.array([[c, s], [-s, c]])  # (4, 2) rotated by angle
    return rot + np.array([cx, cy])


def _random_shape(
    rng: np.random.Generator, height: int, width: int, config: ShapesConfig, backdrop: bool
) -> _Shape:
    """One shape. A ``backdrop`` shape is large and central (painted first, so others cover it);
    the rest have log-uniform sizes, so every COCO size bin is populated."""
    kind = SHAPE_KINDS[int(rng.integers(len(SHAPE_KINDS)))]
    short = min(height, width)
    if backdrop:
        extent = float(rng.uniform(0.7, 1.1) * short)
        cx = rng.uniform(0.3 * width, 0.7 * width)
        cy = rng.uniform(0.3 * height, 0.7 * height)
    else:
        if config.extent_bins:
            share = np.array([b[0] for b in config.extent_bins])
            _, low, high = config.extent_bins[int(rng.choice(len(share), p=share / share.sum()))]
            high = min(high, max(height, width))
        else:
            low, high = config.min_extent, max(config.min_extent + 1, config.max_extent * short)
        extent = float(math.exp(rng.uniform(math.log(low), math.log(max(low, high)))))
        # Centres reach a little past the border, so some shapes are cut by it.
        cx = rng.uniform(-0.05 * width, 1.05 * width)
        cy = rng.uniform(-0.05 * height, 1.05 * height)
    category = SHAPE_KINDS.index(kind) + 1
    if kind in POLYGON_KINDS:
        pts = _polygon_vertices(rng, kind, cx, cy, extent)
        pts[:, 0] = np.clip(pts[:, 0], 0, width)
        pts[:, 1] = np.clip(pts[:, 1], 0, height)
        flat = [round(float(v), 2) for v in pts.reshape(-1)]
        return _Shape(kind, category, _polygon_mask(flat, height, width), flat)
    import cv2

    full = np.zeros((height, width), dtype=np.uint8)
    axes = (max(1, int(round(extent / 2))), max(1, int(round(extent / 2 * rng.uniform(0.4, 1.0)))))
    center = (int(round(cx)), int(round(cy)))
    angle = float(rng.uniform(0, 180))
    cv2.ellipse(full, center, axes, angle, 0, 360, 1, -1)
    if kind == "ring":
        inner = (max(1, axes[0] // 2), max(1, axes[1] // 2))
        cv2.ellipse(full, center, inner, angle, 0, 360, 0, -1)
    return _Shape(kind, category, full.astype(bool), None)


def _crowd(rng: np.random.Generator, height: int, width: int) -> _Shape:
    import cv2

    full = np.zeros((height, width), dtype=np.uint8)
    bw, bh = max(8, width // 3), max(8, height // 3)
    x0 = int(rng.integers(0, width - bw + 1))
    y0 = int(rng.integers(0, height - bh + 1))
    for _ in range(int(rng.integers(6, 14))):
        c = (int(rng.integers(x0, x0 + bw)), int(rng.integers(y0, y0 + bh)))
        cv2.circle(full, c, int(rng.integers(1, 3)), 1, -1)
    return _Shape("dots", CATEGORIES.index("dots") + 1, full.astype(bool), None, crowd=True)


def _edge_case_shapes(height: int, width: int) -> List[_Shape]:
    corner = [0.0, 0.0, 14.0, 0.0, 14.0, 10.0, 0.0, 10.0]  # cut by the top-left corner
    pixel = np.zeros((height, width), dtype=bool)
    pixel[height - 3, width // 2] = True
    return [
        _Shape("rectangle", 1, _polygon_mask(corner, height, width), corner),
        _Shape("pixel", CATEGORIES.index("pixel") + 1, pixel, None),
    ]


def render_shapes_image(
    index: int, config: ShapesConfig
) -> Tuple[np.ndarray, List[Dict[str, Any]]]:
    """Draw image ``index`` of a shapes dataset.

    Returns:
      The image, H x W x 3 uint8 RGB, and one dict per visible instance in painting order:
      ``mask`` (H x W bool, exact), ``kind``, ``category_id``, ``crowd`` and ``polygon`` (the flat
      polygon when the instance is an uncovered polygon shape, else None).
    """
    rng = np.random.default_rng([config.seed, index])
    width, height = config.sizes[index % len(config.sizes)]
    image = _background(rng, height, width)
    shapes = [
        _random_shape(rng, height, width, config, backdrop=config.backdrop and j == 0)
        for j in range(int(rng.integers(config.min_shapes, config.max_shapes + 1)))
    ]
    if config.crowd_every and index % config.crowd_every == 1 % config.crowd_every:
        shapes.append(_crowd(rng, height, width))
    if config.edge_cases and index == 0:
        shapes.extend(_edge_case_shapes(height, width))
    label = np.zeros((height, width), dtype=np.int32)
    for j, shape in enumerate(shapes):
        colour = rng.uniform(0, 255, size=3)
        texture = rng.normal(0, rng.uniform(2, 12), size=image.shape)
        paint = shape.full
        image[paint] = colour + texture[paint]
        label[paint] = j + 1
    instances = []
    for j, shape in enumerate(shapes):
        visible = label == j + 1
        if not visible.any():
            continue  # fully covered by later shapes
        exact_polygon = shape.polygon is not None and np.array_equal(visible, shape.full)
        instances.append(
            {
                "mask": visible,
                "kind": shape.kind,
                "category_id": shape.category_id,
                "crowd": shape.crowd,
                "polygon": shape.polygon if exact_polygon else None,
            }
        )
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), instances
