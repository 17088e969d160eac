"""The demo's bundled example pictures: shapes drawn like the built-in models' training images.

The built-in models come from the proxy benchmark (version 2), trained on shapes whose long side
is 96 px, on a textured background, with objects sized in 4 px tokens as SAM sees COCO's (small 1
to 3 tokens across, medium 3 to 10, large above), stored as JPEG (quality 95). The examples are
drawn at the same size on the same backgrounds from a seed no benchmark split uses, with the
first benchmark's example recipe scaled to 96 px (mostly background, up to 5 shapes of at least
12 px, 3 tokens, a side: what a first click goes for), and go through the same JPEG round trip
before they are saved as PNG. They are
committed under ``demo/examples/``; :func:`write_example_images` is how they were made
(``python -m biglittle_sam.demo.examples demo/examples``).

:func:`click_quality` measures what a first click gives on them: the IoU with the clicked shape of
the mask the demo shows first (the highest predicted IoU of three) and of the best of the three
(``python -m biglittle_sam.demo.examples --clicks``, on the built-in models).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from ..data.shapes import ShapesConfig, background_shapes_config, render_shapes_image

if TYPE_CHECKING:
    from .models import DemoModel

__all__ = [
    "EXAMPLE_CONFIG",
    "EXAMPLE_INDICES",
    "EXAMPLE_SEED",
    "MIN_CLICK_AREA",
    "click_quality",
    "shape_centre",
    "write_example_images",
]

EXAMPLE_SEED = 1000  # the benchmarks' splits use seeds 3 s + 1, 2, 3 for small run seeds s
EXAMPLE_PATCH = 4  # the built-in models' patch: 96 px images are 24 x 24 tokens
EXAMPLE_CONFIG: ShapesConfig = dataclasses.replace(
    background_shapes_config(96, 3, EXAMPLE_SEED), min_extent=3.0 * EXAMPLE_PATCH, max_shapes=5
)
EXAMPLE_INDICES = (0, 1, 2)  # landscape, portrait and square; the first three, not picked
# Shapes that get a click in click_quality: about one token (4 x 4 px) visible or more, the first
# examples' rule (one 8 x 8 patch) at this patch size.
MIN_CLICK_AREA = EXAMPLE_PATCH**2


def _jpeg_round_trip(rgb: np.ndarray, quality: int) -> np.ndarray:
    """``rgb`` (H x W x 3 uint8) as the shapes writer stores it: JPEG at ``quality``, decoded."""
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    return np.asarray(Image.open(buffer).convert("RGB"))


def write_example_images(folder: Path, indices: Sequence[int] = EXAMPLE_INDICES) -> List[Path]:
    """Render the examples as PNGs into ``folder``; returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, index in enumerate(indices, start=1):
        rgb, _ = render_shapes_image(index, EXAMPLE_CONFIG)
        path = folder / f"shapes_{n}.png"
        Image.fromarray(_jpeg_round_trip(rgb, EXAMPLE_CONFIG.jpeg_quality)).save(
            path, optimize=True
        )
        paths.append(path)
    return paths


def shape_centre(mask: np.ndarray) -> Tuple[int, int]:
    """(x, y) of the pixel of an H x W bool ``mask`` farthest from its border: surely on it."""
    import cv2

    dist = cv2.distanceTransform(np.pad(mask, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(x), int(y)


def click_quality(model: "DemoModel", folder: Path) -> List[Dict[str, Any]]:
    """One positive click at the centre of each shape of each example (``shapes_<n>.png`` in
    ``folder``, at least :data:`MIN_CLICK_AREA` pixels), three masks out, as the demo does.

    Returns:
      Per example: ``example`` (1-based), ``shown_ious`` (per clicked shape, the IoU with it of
      the mask with the highest predicted IoU, the one the demo shows first) and ``shown`` (their
      mean), ``best`` (the mean for the best of the three) and ``per_output`` (the mean of each
      of the three outputs).
    """
    from .engine import decode_prompts, encode_image, mask_iou

    rows = []
    for n, index in enumerate(EXAMPLE_INDICES, start=1):
        _, instances = render_shapes_image(index, EXAMPLE_CONFIG)
        rgb = np.asarray(Image.open(folder / f"shapes_{n}.png").convert("RGB"))
        if rgb.shape[:2] != instances[0]["mask"].shape:
            raise ValueError(
                f"{folder}/shapes_{n}.png is {rgb.shape[1]} x {rgb.shape[0]}, not the example "
                "drawn again; the examples are out of date (write_example_images)"
            )
        encoded = encode_image(model, rgb, model.default_keep_ratio)
        shown, best, outputs = [], [], []
        for instance in instances:
            if instance["mask"].sum() < MIN_CLICK_AREA:
                continue
            where = shape_centre(instance["mask"])
            point = np.array([where], np.float32)  # (1, 2) pixel (x, y)
            result = decode_prompts(model, encoded, point, np.array([1]), None, True)
            ious = [mask_iou(m, instance["mask"]) for m in result.masks]
            shown.append(ious[int(np.argmax(result.scores))])
            best.append(max(ious))
            outputs.append(ious)
        rows.append(
            {
                "example": n,
                "shapes": len(shown),
                "shown_ious": [float(v) for v in shown],
                "shown": float(np.mean(shown)),
                "best": float(np.mean(best)),
                "per_output": [float(v) for v in np.mean(outputs, axis=0)],
            }
        )
    return rows


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, List[Dict[str, Any]]]:
    """Write the examples, or with ``--clicks`` print the built-in models' click quality.

    Returns:
      With ``--clicks``, :func:`click_quality`'s rows per model name; else an empty dict.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "folder", type=Path, nargs="?", default=None, help="where to write shapes_<n>.png"
    )
    parser.add_argument(
        "--clicks",
        action="store_true",
        help="instead, click each shape of the committed examples with the built-in models",
    )
    args = parser.parse_args(argv)
    if args.clicks:
        from .models import load_models

        folder = Path(__file__).resolve().parents[2] / "demo" / "examples"
        print("| model | example | shapes | shown first | best of 3 | outputs 1 / 2 / 3 |")
        print("|---|---:|---:|---:|---:|---|")
        measured = {}
        for name, model in load_models(builtin=True).items():
            measured[name] = click_quality(model, folder)
            for r in measured[name]:
                outs = " / ".join(f"{v:.2f}" for v in r["per_output"])
                print(
                    f"| {name} | {r['example']} | {r['shapes']} | {r['shown']:.2f} | "
                    f"{r['best']:.2f} | {outs} |"
                )
        return measured
    if args.folder is None:
        parser.error("name the folder to write the examples to, or pass --clicks")
    for path in write_example_images(args.folder):
        print(path)
    return {}


if __name__ == "__main__":
    main()
