"""The demo on a free localhost port, driven with ``gradio_client`` as an API user would."""

from __future__ import annotations

import json
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, Iterator, Tuple

import numpy as np
import pytest
from PIL import Image

from biglittle_sam.demo.engine import decode_prompts, encode_image, mask_iou
from biglittle_sam.demo.images import load_image
from biglittle_sam.demo.models import DemoModel
from biglittle_sam.demo.render import display_scale
from biglittle_sam.demo.session import NO_IMAGE

from .demo_fixtures import (
    EXAMPLES,
    demo_models,
    example_image,
    interior_point,
    running_demo,
    torch_threads,
)

gradio_client = pytest.importorskip("gradio_client")
# Gradio's queue calls pandas APIs that pandas 3 deprecates; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:::gradio.queueing")


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Tuple[str, Dict[str, DemoModel], bool]]:
    models, trained = demo_models(tmp_path_factory.mktemp("server_models"))
    # gradio_client leaves an empty folder in the system temp dir per downloaded file: point the
    # temp dir at pytest's (the exports must live inside it, Gradio only serves files from there).
    temp = tmp_path_factory.mktemp("tempdir")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tempfile, "tempdir", str(temp))
        with torch_threads(1), running_demo(models, temp / "exports") as url:
            yield url, models, trained


def _client(url: str) -> Any:
    return gradio_client.Client(url, verbose=False, download_files=tempfile.gettempdir())


def test_point_prompt_on_example_returns_the_mask(
    server: Tuple[str, Dict[str, DemoModel], bool],
) -> None:
    url, models, trained = server
    client = _client(url)
    example = EXAMPLES / "shapes_1.png"
    out = client.predict(gradio_client.handle_file(str(example)), api_name="/load_image")
    canvas, message = out[0], out[-1]  # state is server-side: not among the outputs
    _, instances = example_image(1)
    height, width = instances[0]["mask"].shape
    assert f"Loaded shapes_1 ({width} x {height})" in message
    scale = display_scale(height, width)  # small images are enlarged for clicking
    assert scale > 1 and Image.open(canvas).size == (round(width * scale), round(height * scale))
    target = max(instances, key=lambda d: d["mask"].sum())["mask"]
    x, y = interior_point(target)
    out = client.predict(json.dumps({"points": [[x, y, 1]]}), api_name="/prompts")
    choice, cost, message = out[3], out[-2], out[-1]
    assert "Mask from 1 positive" in message
    assert len(choice["choices"]) == 3 and "decoder time" in cost
    png, rle_json = client.predict(api_name="/export")[0]
    mask = np.asarray(Image.open(png)) > 0
    assert mask.shape == target.shape
    rle = json.loads(Path(rle_json).read_text())["annotations"][0]["segmentation"]
    assert rle["size"] == list(target.shape)
    # The served mask is the model's own answer for that click, chosen by predicted IoU...
    model = next(m for m in models.values() if m.is_biglittle)
    encoded = encode_image(model, load_image(example).rgb, model.default_keep_ratio)
    direct = decode_prompts(
        model, encoded, np.array([[x, y]], np.float32), np.array([1]), None, True
    )
    assert np.array_equal(mask, direct.masks[int(np.argmax(direct.scores))])
    if trained:  # ...and with the trained built-in models it covers the clicked shape.
        assert mask_iou(mask, target) > 0.5
        assert mask[y, x]


def test_bad_uploads_and_clicks_keep_the_server_serving(
    server: Tuple[str, Dict[str, DemoModel], bool], tmp_path: Path
) -> None:
    url, _, _ = server
    client = _client(url)
    out = client.predict('{"points": [[5, 5, 1]]}', api_name="/prompts")
    assert out[-1] == NO_IMAGE  # prompts with no image: a message, no exception
    fake = tmp_path / "notes.png"
    fake.write_text("not an image at all")
    out = client.predict(gradio_client.handle_file(str(fake)), api_name="/load_image")
    assert "Could not load the image" in out[-1]
    cmyk = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (50, 40), (0, 255, 255, 0)).save(cmyk)
    out = client.predict(gradio_client.handle_file(str(cmyk)), api_name="/load_image")
    assert "CMYK image converted to RGB" in out[-1]
    out = client.predict('{"points": [[500, 5, 1], [10, 10, 1]]}', api_name="/prompts")
    assert "outside the image were ignored" in out[-1]
    out = client.predict("{broken", api_name="/prompts")
    assert "Bad prompts: not JSON" in out[-1]
    out = client.predict(api_name="/undo")
    assert out[-1].startswith("Removed the last prompt")


def test_keep_ratio_and_everything_over_the_api(
    server: Tuple[str, Dict[str, DemoModel], bool],
) -> None:
    url, models, _ = server
    client = _client(url)
    client.predict(
        gradio_client.handle_file(str(EXAMPLES / "shapes_3.png")), api_name="/load_image"
    )
    client.predict('{"points": [[48, 48, 1]]}', api_name="/prompts")
    cost = client.predict(r=0.25, api_name="/keep_ratio")[-2]
    assert "0.25 of the tokens" in cost and "decoder time" in cost
    message = client.predict(8, api_name="/everything")[-1]
    assert "masks from 8x8 points" in message


def test_sessions_share_no_state(server: Tuple[str, Dict[str, DemoModel], bool]) -> None:
    url, _, _ = server
    first, second = _client(url), _client(url)
    first.predict(gradio_client.handle_file(str(EXAMPLES / "shapes_2.png")), api_name="/load_image")
    assert second.predict('{"points": [[5, 5, 1]]}', api_name="/prompts")[-1] == NO_IMAGE
    assert (
        "Mask from 1 positive" in first.predict('{"points": [[5, 5, 1]]}', api_name="/prompts")[-1]
    )


def test_serves_no_local_files(server: Tuple[str, Dict[str, DemoModel], bool]) -> None:
    url, _, _ = server
    readme = Path(__file__).resolve().parents[1] / "setup.cfg"
    for path in (readme, Path("/etc/hostname")):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"{url}gradio_api/file={path}", timeout=10)
        assert info.value.code in (403, 404)
