"""A synthetic segmentation dataset with exact instance masks, in COCO, LVIS and SA-1B format.

Each image has a textured or noisy background and a few shapes (rectangles, ellipses, triangles,
stars, regular polygons, rings) of several sizes and colours that overlap. Shapes are painted in
order on a label map, so every instance's visible mask is exact: the pixels with its label.

- A polygon shape that nothing covers is stored as its polygon. Its mask is defined as
  pycocotools' rasterization of that polygon, so a reader that goes through pycocotools gets back
  exactly the painted pixels.
- Every other instance (ellipses, rings, covered shapes) is stored as compressed RLE.
- Every ``crowd_every``-th image gets a crowd region (a cluster of dots, ``iscrowd=1``) stored as
  uncompressed RLE, as COCO stores its crowd annotations.
- Image 0 also gets a one-pixel object and a rectangle cut by the image corner (``edge_cases``).

Layout under ``out_dir``::

    coco/val2017/000000000001.jpg ...           images (COCO and LVIS)
    coco/annotations/instances_shapes.json      COCO instances (polygons, RLE, crowd)
    coco/annotations/lvis_shapes.json           LVIS style: coco_url, no crowd
    coco/detections_shapes.json                 a noisy "detector" in COCO results format
    sa1b/sa_1.jpg, sa1b/sa_1.json ...           SA-1B format (compressed RLE, no crowd)

The toy benchmark and the tests both use it: ``make_shapes_dataset(out_dir, ShapesConfig())``.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from PIL import Image

from .masks import decode_rle, encode_mask, rle_area, rle_bbox
from .records import PathLike

__all__ = [
    "ShapesConfig",
    "ShapesDataset",
    "SHAPE_KINDS",
    "background_shapes_config",
    "make_shapes_dataset",
    "render_shapes_image",
    "uncompressed_rle",
]

SHAPE_KINDS = ("rectangle", "ellipse", "triangle", "star", "polygon", "ring")
POLYGON_KINDS = ("rectangle", "triangle", "star", "polygon")
# Category ids: one per shape kind, then the crowd dots and the one-pixel object.
CATEGORIES = [*SHAPE_KINDS, "dots", "pixel"]
FORMATS = ("coco", "lvis", "sa1b")


@dataclass(frozen=True)
class ShapesConfig:
    """What :func:`make_shapes_dataset` writes; the defaults give a dataset a test reads quickly."""

    num_images: int = 8  # enough for every kind, size bin, aspect ratio and a few crowd regions
    seed: int = 0  # image i is drawn from default_rng([seed, i]) alone
    # (width, height) cycled over the images: landscape, portrait, square, wide; the larger ones
    # hold shapes above 96^2 pixels, the "large" COCO bin.
    sizes: Tuple[Tuple[int, int], ...] = ((160, 120), (120, 160), (200, 200), (144, 96), (256, 192))
    min_shapes: int = 3  # per image
    max_shapes: int = 7  # per image
    min_extent: float = 6.0  # smallest shape side in pixels (the "small" bin is below 32^2 px)
    max_extent: float = 0.75  # largest shape side, as a share of the image's short side
    crowd_every: int = 3  # every n-th image (1, 1 + n, ...) gets one crowd region; 0 for none
    edge_cases: bool = True  # image 0 gets a one-pixel object and a shape cut by the corner
    formats: Tuple[str, ...] = FORMATS  # any of "coco", "lvis", "sa1b"
    detections: bool = True  # write a noisy-box detector's results (needs "coco")
    jpeg_quality: int = 95  # masks are exact whatever the quality; only pixel colours change
    backdrop: bool = True  # the first shape is large and central (False: objects stay a minority)

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


@dataclass(frozen=True)
class ShapesDataset:
    """Where :func:`make_shapes_dataset` wrote each format (None for formats not written)."""

    root: Path
    coco_annotations: Optional[Path]
    coco_images: Optional[Path]
    lvis_annotations: Optional[Path]
    lvis_image_root: Optional[Path]
    sa1b_dir: Optional[Path]
    detections: Optional[Path]
    num_images: int
    num_instances: int  # COCO annotations, crowd regions included
    image_ids: List[int] = field(default_factory=list)


@dataclass
class _Shape:
    kind: str
    category_id: int
    full: np.ndarray  # H x W bool: the whole shape as painted
    polygon: Optional[List[float]]  # flat [x1, y1, ...] when the shape is defined by one
    crowd: bool = False


def uncompressed_rle(mask: np.ndarray) -> Dict[str, Any]:
    """COCO's uncompressed RLE of an H x W bool mask: column-major runs, starting with zeros."""
    h, w = mask.shape
    flat = mask.flatten(order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0] == 1:
        counts = [0] + counts
    return {"size": [int(h), int(w)], "counts": [int(c) for c in counts]}


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
        high = max(config.min_extent + 1, config.max_extent * short)
        extent = float(math.exp(rng.uniform(math.log(config.min_extent), math.log(high))))
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


def _check_out_dir(root: Path, overwrite: bool, parts: List[str]) -> None:
    for part in parts:
        target = root / part
        if target.exists() and any(target.iterdir()):
            if not overwrite:
                raise FileExistsError(
                    f"{target} already exists and is not empty; pass overwrite=True "
                    "(--overwrite) to replace it"
                )
            shutil.rmtree(target)


def make_shapes_dataset(
    out_dir: PathLike, config: Optional[ShapesConfig] = None, overwrite: bool = False
) -> ShapesDataset:
    """Write a synthetic shapes dataset (see the module docstring for the layout).

    Arguments:
      out_dir: the folder to write into; its ``coco/`` and ``sa1b/`` parts are created.
      config: what to draw; ``ShapesConfig()`` when None.
      overwrite: replace existing ``coco/`` / ``sa1b/`` folders instead of refusing.

    Images are written one at a time, so the generator needs memory for one image only.
    """
    config = config or ShapesConfig()
    root = Path(out_dir)
    want_coco = "coco" in config.formats or "lvis" in config.formats
    parts = (["coco"] if want_coco else []) + (["sa1b"] if "sa1b" in config.formats else [])
    _check_out_dir(root, overwrite, parts)
    coco_images = root / "coco" / "val2017"
    sa1b_dir = root / "sa1b"
    if want_coco:
        coco_images.mkdir(parents=True, exist_ok=True)
        (root / "coco" / "annotations").mkdir(parents=True, exist_ok=True)
    if "sa1b" in config.formats:
        sa1b_dir.mkdir(parents=True, exist_ok=True)
    det_rng = np.random.default_rng([config.seed, 1_000_003])
    images: List[Dict[str, Any]] = []
    annotations: List[Dict[str, Any]] = []
    detections: List[Dict[str, Any]] = []
    ann_id = 0
    image_ids = []
    for index in range(config.num_images):
        image, instances = render_shapes_image(index, config)
        height, width = image.shape[:2]
        image_id = index + 1
        image_ids.append(image_id)
        file_name = f"{image_id:012d}.jpg"
        jpeg = coco_images / file_name if want_coco else sa1b_dir / f"sa_{image_id}.jpg"
        Image.fromarray(image).save(jpeg, quality=config.jpeg_quality)
        images.append({"id": image_id, "width": width, "height": height, "file_name": file_name})
        sa1b_anns = []
        for inst in instances:
            ann_id += 1
            mask = inst["mask"]
            rle = encode_mask(mask)
            bbox = rle_bbox(rle)
            area = rle_area(rle)
            if inst["crowd"]:
                seg: Any = uncompressed_rle(mask)
            elif inst["polygon"] is not None:
                seg = [inst["polygon"]]
            else:
                seg = rle
            annotations.append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": inst["category_id"],
                    "segmentation": seg,
                    "area": float(area),
                    "bbox": bbox,
                    "iscrowd": int(inst["crowd"]),
                }
            )
            if inst["crowd"]:
                continue
            ys, xs = np.nonzero(mask)
            middle = len(ys) // 2
            sa1b_anns.append(
                {
                    "id": ann_id,
                    "segmentation": rle,
                    "bbox": bbox,
                    "area": int(area),
                    "predicted_iou": round(float(det_rng.uniform(0.85, 1.0)), 4),
                    "stability_score": round(float(det_rng.uniform(0.9, 1.0)), 4),
                    "point_coords": [[float(xs[middle]), float(ys[middle])]],
                    "crop_box": [0.0, 0.0, float(width), float(height)],
                }
            )
            if config.detections:
                detections.extend(
                    _noisy_detection(det_rng, image_id, inst["category_id"], bbox, width, height)
                )
        if config.detections:
            detections.extend(_false_positives(det_rng, image_id, width, height))
        if "sa1b" in config.formats:
            target = sa1b_dir / f"sa_{image_id}.jpg"
            if jpeg != target:
                shutil.copyfile(jpeg, target)
            sa1b = {
                "image": {
                    "image_id": image_id,
                    "width": width,
                    "height": height,
                    "file_name": f"sa_{image_id}.jpg",
                },
                "annotations": sa1b_anns,
            }
            (sa1b_dir / f"sa_{image_id}.json").write_text(json.dumps(sa1b), encoding="utf-8")
    categories = [
        {"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CATEGORIES)
    ]
    coco_json = lvis_json = det_json = None
    if "coco" in config.formats:
        coco_json = root / "coco" / "annotations" / "instances_shapes.json"
        payload = {
            "info": {"description": "biglittle-sam synthetic shapes", "seed": config.seed},
            "images": images,
            "annotations": annotations,
            "categories": categories,
        }
        coco_json.write_text(json.dumps(payload), encoding="utf-8")
        if config.detections:
            det_json = root / "coco" / "detections_shapes.json"
            det_json.write_text(json.dumps(detections), encoding="utf-8")
    if "lvis" in config.formats:
        lvis_json = root / "coco" / "annotations" / "lvis_shapes.json"
        lvis_images = [
            {
                "id": img["id"],
                "width": img["width"],
                "height": img["height"],
                "coco_url": f"http://images.cocodataset.org/val2017/{img['file_name']}",
                "neg_category_ids": [],
                "not_exhaustive_category_ids": [],
            }
            for img in images
        ]
        lvis_anns = [
            {k: v for k, v in a.items() if k != "iscrowd"} for a in annotations if not a["iscrowd"]
        ]
        payload = {"images": lvis_images, "annotations": lvis_anns, "categories": categories}
        lvis_json.write_text(json.dumps(payload), encoding="utf-8")
    return ShapesDataset(
        root=root,
        coco_annotations=coco_json,
        coco_images=coco_images if want_coco else None,
        lvis_annotations=lvis_json,
        lvis_image_root=root / "coco" if lvis_json else None,
        sa1b_dir=sa1b_dir if "sa1b" in config.formats else None,
        detections=det_json,
        num_images=config.num_images,
        num_instances=len(annotations),
        image_ids=image_ids,
    )


def _noisy_detection(
    rng: np.random.Generator,
    image_id: int,
    category_id: int,
    bbox: List[float],
    width: int,
    height: int,
) -> List[Dict[str, Any]]:
    """A detector's box for one object: jittered, sometimes missed or mislabelled."""
    if rng.random() < 0.1:
        return []
    x, y, w, h = bbox
    jitter = rng.normal(0, 0.08, size=4) * np.array([w, h, w, h])
    x0 = float(np.clip(x + jitter[0], 0, width - 1))
    y0 = float(np.clip(y + jitter[1], 0, height - 1))
    x1 = float(np.clip(x + w + jitter[2], x0 + 1, width))
    y1 = float(np.clip(y + h + jitter[3], y0 + 1, height))
    category = category_id if rng.random() < 0.9 else int(rng.integers(1, len(CATEGORIES) + 1))
    return [
        {
            "image_id": image_id,
            "category_id": int(category),
            "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
            "score": round(float(rng.uniform(0.5, 1.0)), 4),
        }
    ]


def _false_positives(
    rng: np.random.Generator, image_id: int, width: int, height: int
) -> List[Dict[str, Any]]:
    out = []
    for _ in range(int(rng.integers(0, 3))):
        w = float(rng.uniform(4, width / 2))
        h = float(rng.uniform(4, height / 2))
        x = float(rng.uniform(0, width - w))
        y = float(rng.uniform(0, height - h))
        out.append(
            {
                "image_id": image_id,
                "category_id": int(rng.integers(1, len(CATEGORIES) + 1)),
                "bbox": [round(x, 2), round(y, 2), round(w, 2), round(h, 2)],
                "score": round(float(rng.uniform(0.05, 0.5)), 4),
            }
        )
    return out
