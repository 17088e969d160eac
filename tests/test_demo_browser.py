"""A real browser (headless Debian Chromium, driven by Playwright) clicks on an object and finds the
mask overlay. Screenshots go to the test's tmp folder and to outputs/screenshots/."""

from __future__ import annotations

import io
import shutil
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import numpy as np
import pytest
from PIL import Image

from biglittle_sam.demo import controller as controller_module
from biglittle_sam.demo.engine import decode_prompts, encode_image, mask_iou
from biglittle_sam.demo.images import load_image
from biglittle_sam.demo.models import DemoModel
from biglittle_sam.demo.render import display_scale, resize_for_display

from .demo_fixtures import (
    EXAMPLES,
    SCREENSHOTS,
    demo_models,
    example_image,
    interior_point,
    running_demo,
    torch_threads,
)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

if not Path(CHROMIUM).exists():
    pytest.skip(
        "Chromium is not installed (apt-get install chromium); the browser test needs it",
        allow_module_level=True,
    )
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the playwright package is not installed (pip install -e .[dev])"
)
pytestmark = pytest.mark.filterwarnings("ignore:::gradio.queueing")


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Tuple[str, Dict[str, DemoModel], bool]]:
    models, trained = demo_models(tmp_path_factory.mktemp("browser_models"))
    with torch_threads(1), running_demo(models, tmp_path_factory.mktemp("exports")) as url:
        yield url, models, trained


@pytest.fixture(scope="module")
def page(server: Tuple[str, Dict[str, DemoModel], bool]) -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.set_default_timeout(30_000)
        try:
            yield page
        finally:
            browser.close()


def _save(page: Any, tmp_path: Path, name: str) -> Path:
    shot = tmp_path / name
    page.screenshot(path=str(shot), full_page=True)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, SCREENSHOTS / name)
    return shot


def _canvas_png(page: Any) -> Tuple[np.ndarray, str]:
    src = page.locator("#canvas img").get_attribute("src")
    body = page.request.get(src).body()
    return np.asarray(Image.open(io.BytesIO(body)).convert("RGB")), src


def _click_canvas(page: Any, x: float, y: float) -> None:
    """Click canvas pixel (x, y), laid out as Gradio's own click handler computes it."""
    img = page.locator("#canvas img")
    box = img.bounding_box()
    natural = page.evaluate(
        "() => { const i = document.querySelector('#canvas img');"
        " return [i.naturalWidth, i.naturalHeight]; }"
    )
    s = min(box["width"] / natural[0], box["height"] / natural[1], 1.0)
    left = box["x"] + (box["width"] - natural[0] * s) / 2
    top = box["y"] + (box["height"] - natural[1] * s) / 2
    page.mouse.click(left + x * s, top + y * s)


def _wait_new_canvas(page: Any, old_src: str) -> None:
    page.wait_for_function(
        "(src) => { const i = document.querySelector('#canvas img'); return i && i.src !== src; }",
        arg=old_src,
    )


def test_click_on_object_shows_mask_overlay(
    page: Any, server: Tuple[str, Dict[str, DemoModel], bool], tmp_path: Path
) -> None:
    url, models, trained = server
    page.goto(url)
    page.wait_for_selector("#canvas")
    _save(page, tmp_path, "demo_start.png")
    page.locator(".gallery-item").first.click()  # the first bundled example
    page.wait_for_selector("#canvas img")
    page.wait_for_function(
        "() => document.querySelector('#message').innerText.includes('Loaded shapes_1')"
    )
    before, src = _canvas_png(page)
    rgb = load_image(EXAMPLES / "shapes_1.png").rgb
    scale = display_scale(*rgb.shape[:2])
    assert np.array_equal(before, resize_for_display(rgb, scale))  # no overlay yet

    _, instances = example_image(1)
    target = max(instances, key=lambda d: d["mask"].sum())["mask"]
    x, y = interior_point(target)
    _click_canvas(page, x * scale, y * scale)
    _wait_new_canvas(page, src)
    page.wait_for_selector("#choice", state="visible")
    page.wait_for_timeout(500)  # let the gallery thumbnails load before the screenshot
    shot = _save(page, tmp_path, "demo_click.png")
    assert shot.stat().st_size > 10_000

    after, _ = _canvas_png(page)
    changed = np.any(after != before, axis=2)
    bluer = after[..., 2].astype(int) > before[..., 2].astype(int)
    # The overlay is exactly where the model's best mask for this click is, tinted blue.
    model = next(m for m in models.values() if m.is_biglittle)
    encoded = encode_image(model, rgb, model.default_keep_ratio)
    point = np.array([[x, y]], np.float32)
    direct = decode_prompts(model, encoded, point, np.array([1]), None, True)
    expected = resize_for_display(direct.masks[int(np.argmax(direct.scores))], scale)
    if expected.any():
        assert changed[expected].mean() > 0.97
        assert bluer[expected].mean() > 0.9
    outside = changed & ~expected
    assert outside.mean() < 0.05  # only the prompt marker and the outline lie outside
    assert changed[round(y * scale), round(x * scale)]  # the point marker is drawn where clicked
    labels = page.locator("#choice label").all_inner_texts()
    assert len(labels) == 3 and all("predicted IoU" in t for t in labels)
    assert "Mask from 1 positive" in page.locator("#message").inner_text()
    assert "decoder time" in page.locator("#cost").inner_text()
    if trained:
        assert mask_iou(expected, resize_for_display(target, scale)) > 0.5

    # Heat map and compare: the page shows both canvases and the IoU between the models' masks.
    page.get_by_label("Heat map: where the big blocks spent compute").check()
    page.wait_for_function("() => document.querySelector('#cost').innerText.includes('heat map')")
    page.get_by_label("Compare: plain SAM and big.LITTLE side by side").check()
    page.wait_for_selector("#compare-canvas img")
    page.wait_for_function(
        "() => document.querySelector('#compare-text').innerText.includes('IoU between')"
    )
    page.wait_for_timeout(500)
    _save(page, tmp_path, "demo_compare_heat.png")
    assert "measured encoder speedup" in page.locator("#cost").inner_text()


def test_segment_everything_and_a_corrupt_upload(
    page: Any, server: Tuple[str, Dict[str, DemoModel], bool], tmp_path: Path
) -> None:
    url, _, _ = server
    page.goto(url)
    page.locator(".gallery-item").nth(1).click()
    page.wait_for_function(
        "() => document.querySelector('#message').innerText.includes('Loaded shapes_2')"
    )
    page.get_by_role("button", name="Segment everything").click()
    page.wait_for_function(
        "() => document.querySelector('#message').innerText.includes('Segment everything:')"
    )
    page.wait_for_timeout(300)
    _save(page, tmp_path, "demo_everything.png")
    text = page.locator("#message").inner_text()
    assert "masks from 16x16 points" in text and "predicted IoU >=" in text

    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)  # a PNG signature, then nothing
    page.locator("#image-input input[type=file]").set_input_files(str(corrupt))
    page.wait_for_function(
        "() => document.querySelector('#message').innerText.includes('Could not load the image')"
    )
    _save(page, tmp_path, "demo_corrupt_upload.png")
    assert "corrupt.png" in page.locator("#message").inner_text()
    # The server still serves: an example loads and segments again.
    page.locator(".gallery-item").first.click()
    page.wait_for_function(
        "() => document.querySelector('#message').innerText.includes('Loaded shapes_1')"
    )


def test_long_thin_image_and_the_keep_ratio_slider(
    page: Any,
    server: Tuple[str, Dict[str, DemoModel], bool],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, _, _ = server
    page.goto(url)
    strip = tmp_path / "panorama.png"
    Image.fromarray(np.full((50, 4000, 3), 180, np.uint8)).save(strip)
    page.locator("#image-input input[type=file]").set_input_files(str(strip))
    page.wait_for_function(
        "() => document.querySelector('#message').innerText.includes('Loaded panorama')"
    )
    page.wait_for_timeout(300)
    _save(page, tmp_path, "demo_long_thin_image.png")
    box = page.locator("#canvas img").bounding_box()
    assert box["height"] >= box["width"] / 4 - 2  # stretched to 4:1, not a 10 px strip
    assert "stretched" in page.locator("#message").inner_text()

    # Dragging the slider through 0.45, 0.40, ... encodes once, at the value where it is released;
    # while it runs, the message line says what is running.
    ratios: List[float] = []

    def slow_encode(model: DemoModel, image: np.ndarray, ratio: float) -> Any:
        ratios.append(ratio)
        time.sleep(1.5)
        return encode_image(model, image, ratio)

    monkeypatch.setattr(controller_module, "encode_image", slow_encode)
    track = page.locator("#keep-ratio input[type=range]").bounding_box()
    y = track["y"] + track["height"] / 2

    def at(value: float) -> float:  # the slider runs from 0.05 to 1
        return track["x"] + track["width"] * (value - 0.05) / 0.95

    page.mouse.move(at(0.5), y)
    page.mouse.down()
    for value in (0.45, 0.4, 0.35, 0.3, 0.25):
        page.mouse.move(at(value), y, steps=3)
        page.wait_for_timeout(150)
    page.mouse.up()
    page.wait_for_function(  # what runs, in the message line; the elapsed time, on the picture
        "() => document.querySelector('#message').innerText.includes('Working: encoding')"
        " && /[0-9]+[.][0-9]s/.test(document.querySelector('#canvas').innerText)"
    )
    _save(page, tmp_path, "demo_encoding_progress.png")
    assert "at keep ratio 0.25" in page.locator("#message").inner_text()
    page.wait_for_function("() => document.querySelector('#cost').innerText.includes('0.25 of')")
    assert ratios == [0.25]
