"""Models, images and a live server for the demo tests.

The demo tests use the trained built-in models from ``biglittle_sam/assets`` when they are there
(then a click on a shape must give a mask of that shape); otherwise a random-weight ``vit_tiny``
and a ``bl_tiny`` that inherits from it, which exercise every code path but cannot segment
anything.
"""

from __future__ import annotations

import contextlib
import socket
import time
import urllib.request
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image

from biglittle_sam import model_config, sam_model_registry, save_model_checkpoint
from biglittle_sam.data.shapes import render_shapes_image
from biglittle_sam.demo.examples import EXAMPLE_CONFIG, EXAMPLE_INDICES, shape_centre
from biglittle_sam.demo.models import DemoModel, default_model_paths, load_demo_model, load_models
from biglittle_sam.demo.page import Bounds, build_demo, launch_options

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "demo" / "examples"
SCREENSHOTS = ROOT / "outputs" / "screenshots"


def _trained_models() -> Optional[Dict[str, DemoModel]]:
    """The built-in trained models when they are committed, a plain SAM and a big.LITTLE one
    (then mask quality is checkable); else None."""
    if not default_model_paths():
        return None
    models = load_models(builtin=True)
    kinds = {m.is_biglittle for m in models.values()}
    return models if kinds == {True, False} else None


def random_models(folder: Path) -> Dict[str, DemoModel]:
    """A random plain ``vit_tiny`` and a ``bl_tiny`` inheriting from it, loaded like user files."""
    torch.manual_seed(0)
    sam = sam_model_registry["vit_tiny"]()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in sam.image_encoder.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    sam_path = folder / "tiny_sam.pth"
    torch.save(sam.state_dict(), sam_path)  # the official layout: a bare state dict
    bl = sam_model_registry["bl_tiny"](sam_checkpoint=sam_path, keep_ratio=0.5, training_free=False)
    bl_path = folder / "tiny_bl.pth"
    save_model_checkpoint(bl_path, bl, model_config(bl), teacher="vit_tiny")
    return {
        "tiny SAM": load_demo_model(sam_path, "tiny SAM"),
        "tiny big.LITTLE": load_demo_model(bl_path, "tiny big.LITTLE"),
    }


def demo_models(folder: Path) -> Tuple[Dict[str, DemoModel], bool]:
    """(models, trained): the built-in trained models if committed, else random ones."""
    trained = _trained_models()  # loaded once, not once to check and once to use
    if trained is not None:
        return trained, True
    return random_models(folder), False


def example_image(n: int = 1) -> Tuple[np.ndarray, List[dict]]:
    """Example ``n`` (1-based) as the demo serves it (the committed PNG), with its exact instance
    masks (from rendering it again)."""
    _, instances = render_shapes_image(EXAMPLE_INDICES[n - 1], EXAMPLE_CONFIG)
    rgb = np.asarray(Image.open(EXAMPLES / f"shapes_{n}.png").convert("RGB"))
    assert rgb.shape[:2] == instances[0]["mask"].shape, "demo/examples is out of date"
    return rgb, instances


def interior_point(mask: np.ndarray) -> Tuple[int, int]:
    """(x, y) of the mask pixel farthest from the mask's border: a click surely on the object."""
    return shape_centre(mask)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with ``n`` torch CPU threads: the tiny models' decoder is faster on one thread than on
    two contended ones, which keeps these tests quick on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def running_demo(
    models: Dict[str, DemoModel], export_dir: Path, bounds: Bounds = Bounds()
) -> Iterator[str]:
    """Serve :func:`biglittle_sam.demo.page.build_demo` with the bundled examples on a free
    localhost port, under ``bounds``; yields its URL."""
    demo = build_demo(models, EXAMPLES, export_dir=export_dir, bounds=bounds)
    demo.queue(default_concurrency_limit=2)
    port = free_port()
    demo.launch(
        server_name="127.0.0.1",
        server_port=port,
        prevent_thread_lock=True,
        quiet=True,
        **launch_options(bounds),
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_for(url)
        yield url
    finally:
        demo.close()
