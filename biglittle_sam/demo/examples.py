"""The demo's bundled example pictures: shapes drawn like the built-in models' training images.

The built-in models come from the proxy benchmark, trained on mostly-background shapes whose long
side is 128 px and which were stored as JPEG (quality 95). The examples are drawn the same way
from a seed no benchmark split uses, at the same size, and go through the same JPEG round trip
before they are saved as PNG, so a first click sees what the models were trained on. They are
committed under ``demo/examples/``; :func:`write_example_images` is how they were made
(``python -m biglittle_sam.demo.examples demo/examples``).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
from PIL import Image

from ..data.shapes import ShapesConfig, background_shapes_config, render_shapes_image

__all__ = ["EXAMPLE_CONFIG", "EXAMPLE_INDICES", "EXAMPLE_SEED", "write_example_images"]

EXAMPLE_SEED = 1000  # the benchmarks' splits use seeds 3 s + 1, 2, 3 for small run seeds s
# Shapes at least 16 px (two 8 px patches) on a side: what a 16 x 16 token grid resolves, and what a
# first click goes for. The training images also hold smaller ones (from 3 px); on those the
# built-in models are weak (the proxy benchmark's "small" bin, docs/benchmarks/proxy.md).
EXAMPLE_CONFIG: ShapesConfig = dataclasses.replace(
    background_shapes_config(128, 16, EXAMPLE_SEED), min_extent=16.0, max_shapes=5
)
EXAMPLE_INDICES = (0, 1, 2)  # landscape, portrait and square; the first three, not picked


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


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folder", type=Path, help="where to write shapes_<n>.png")
    args = parser.parse_args(argv)
    for path in write_example_images(args.folder):
        print(path)


if __name__ == "__main__":
    main()
