"""The demo's bundled example pictures: synthetic shapes, like the built-in models were trained on.

They are committed under ``demo/examples/``; :func:`write_example_images` is how they were made
(``python -m biglittle_sam.demo.examples demo/examples``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import List, Optional, Sequence

from PIL import Image

from ..data.shapes import ShapesConfig, render_shapes_image

__all__ = ["EXAMPLE_CONFIG", "EXAMPLE_INDICES", "write_example_images"]

# One landscape size the toy models saw in training; no crowd or one-pixel edge cases, which are
# for evaluation, not for a first click.
EXAMPLE_CONFIG = ShapesConfig(
    sizes=((256, 192),), crowd_every=0, edge_cases=False, min_shapes=3, max_shapes=5, seed=7
)
EXAMPLE_INDICES = (0, 1, 3)  # varied: overlapping shapes, a ring, a star on a checkerboard
PALETTE_COLOURS = 32  # the per-pixel texture noise does not compress; a palette keeps files small


def write_example_images(folder: Path, indices: Sequence[int] = EXAMPLE_INDICES) -> List[Path]:
    """Render the examples as palette PNGs into ``folder``; returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, index in enumerate(indices, start=1):
        rgb, _ = render_shapes_image(index, EXAMPLE_CONFIG)
        path = folder / f"shapes_{n}.png"
        palette = Image.fromarray(rgb).quantize(PALETTE_COLOURS, dither=Image.Dither.NONE)
        palette.save(path, optimize=True)
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
