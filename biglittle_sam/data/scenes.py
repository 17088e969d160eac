"""Photo-like shapes scenes: a few objects on a minority of a textured image, sizes in every bin.

The shapes dataset (:mod:`.shapes`) paints a large backdrop shape first, so objects cover most of
each image; routing cannot show its worth there. A scene is drawn like a photograph in the one
respect that matters to routing: most of it is background. Its objects are the shapes dataset's
kinds, sized log-uniformly between ``min_side`` and ``max_side`` (shares of the image side), so they
span SAM's small / medium / large bins scaled to the image (:func:`size_bin`), and an object that
would push the objects' union past ``max_object_share`` of the image is left out.

:func:`render_scene_image` returns what :func:`~.shapes.render_shapes_image` returns (the image and
its exact instance masks), so the same writer can store scenes in COCO format.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Tuple

import numpy as np

from .shapes import ShapesConfig, _background, _random_shape

__all__ = ["SIZE_BINS", "SceneConfig", "render_scene_image", "size_bin"]

# COCO's small / medium / large limits (32^2 and 96^2 px) as shares of a 640 px image's side, the
# size COCO's images have: an object's bin depends on its size relative to the image.
SIZE_BINS: Tuple[float, float] = (32 / 640, 96 / 640)


def size_bin(area: float, image_area: float) -> str:
    """ "small", "medium" or "large": ``area`` against COCO's limits scaled to ``image_area``."""
    if image_area <= 0:
        raise ValueError(f"image_area must be > 0, got {image_area}")
    side = (area / image_area) ** 0.5  # the object's side as a share of a square image's side
    return "small" if side < SIZE_BINS[0] else "medium" if side < SIZE_BINS[1] else "large"


@dataclass(frozen=True)
class SceneConfig:
    """What :func:`render_scene_image` draws."""

    size: int = 256  # square images, px
    seed: int = 0  # image i is drawn from default_rng([seed, i]) alone
    min_objects: int = 2  # objects tried per image
    max_objects: int = 6
    min_side: float = 0.03  # smallest object side, a share of the image side (small bin: < 0.05)
    max_side: float = 0.45  # largest (large bin: >= 0.15)
    max_object_share: float = 0.35  # the objects' union stays below this share of the image

    def __post_init__(self) -> None:
        if self.size < 16:
            raise ValueError(f"size must be >= 16 px, got {self.size}")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(
                f"need 1 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}"
            )
        if not 0 < self.min_side < self.max_side <= 1:
            raise ValueError(
                f"need 0 < min_side < max_side <= 1, got {self.min_side}, {self.max_side}"
            )
        if not 0 < self.max_object_share < 1:
            raise ValueError(f"max_object_share must be in (0, 1), got {self.max_object_share}")


def render_scene_image(index: int, config: SceneConfig) -> Tuple[np.ndarray, List[Dict[str, Any]]]:
    """Draw image ``index`` of a scenes set.

    Returns:
      The image, S x S x 3 uint8 RGB, and one dict per visible instance in painting order:
      ``mask`` (S x S bool, exact), ``kind``, ``category_id``, ``crowd`` (always False) and
      ``polygon`` (the flat polygon when the instance is an uncovered polygon shape, else None).
    """
    rng = np.random.default_rng([config.seed, index])
    size = config.size
    image = _background(rng, size, size)
    shapes_config = ShapesConfig(min_extent=config.min_side * size, max_extent=config.max_side)
    union = np.zeros((size, size), dtype=bool)
    shapes = []
    for _ in range(int(rng.integers(config.min_objects, config.max_objects + 1))):
        shape = _random_shape(rng, size, size, shapes_config, backdrop=False)
        grown = union | shape.full
        if not shape.full.any() or grown.mean() > config.max_object_share:
            continue  # off the image, or too much of it: the background stays the majority
        union = grown
        shapes.append(shape)
    label = np.zeros((size, size), dtype=np.int32)
    for j, shape in enumerate(shapes):
        colour = rng.uniform(0, 255, size=3)
        texture = rng.normal(0, rng.uniform(2, 12), size=image.shape)
        image[shape.full] = colour + texture[shape.full]
        label[shape.full] = j + 1
    instances = []
    for j, shape in enumerate(shapes):
        visible = label == j + 1
        if not visible.any():
            continue  # fully covered by later shapes
        exact = shape.polygon is not None and np.array_equal(visible, shape.full)
        instances.append(
            {
                "mask": visible,
                "kind": shape.kind,
                "category_id": shape.category_id,
                "crowd": False,
                "polygon": shape.polygon if exact else None,
            }
        )
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), instances
