"""What the demo keeps per user is bounded: encodings per session, a compact usage map, files that
go with their session, an idle time-to-live and a session cap on a live server."""

from __future__ import annotations

import datetime
import gc
import time
import types
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List

import numpy as np
import pytest
from PIL import Image

from biglittle_sam.demo.controller import DemoController
from biglittle_sam.demo.models import DemoModel
from biglittle_sam.demo.page import Bounds, build_demo
from biglittle_sam.demo.session import NO_IMAGE, DemoSession, Settings

from .demo_fixtures import EXAMPLES, example_image, random_models, running_demo, torch_threads

gradio_client = pytest.importorskip("gradio_client")
pytestmark = pytest.mark.filterwarnings("ignore:::gradio.queueing")


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, DemoModel]:
    return random_models(tmp_path_factory.mktemp("bounds_models"))


def _student(models: Dict[str, DemoModel]) -> str:
    return next(name for name, m in models.items() if m.is_biglittle)


def test_usage_map_is_kept_at_token_resolution(models: Dict[str, DemoModel]) -> None:
    controller = DemoController(models)
    session = DemoSession()
    settings = Settings(model=_student(models), heat=True)
    wide = np.zeros((600, 4600, 3), np.uint8)
    view = controller.load(session, wide, settings)
    (encoded,) = session.cache.values()
    model = models[settings.model]
    grid = model.config.img_size // model.config.patch_size
    rows, cols = encoded.usage_grid.shape
    assert rows <= grid and cols == grid  # only the tokens over the image, one float each
    assert encoded.usage_grid.nbytes <= grid * grid * 4
    assert encoded.usage_grid.nbytes * 1000 < session.image.rgb.shape[0] * 4096 * 4
    # Drawn at any size on demand: the full-size map and the canvas overlay.
    assert encoded.usage.shape == session.image.rgb.shape[:2]
    assert encoded.usage_at((13, 100)).shape == (13, 100)
    assert "heat map" in view.cost


def test_encodings_per_session_are_bounded(models: Dict[str, DemoModel]) -> None:
    controller = DemoController(models)
    session = DemoSession(cache_entries=2)
    settings = Settings(model=_student(models))
    controller.load(session, example_image(1)[0], settings)
    for ratio in (0.25, 0.75, 1.0):
        settings.keep_ratio = ratio
        controller.refresh(session, settings)
    assert list(session.cache) == [(settings.model, 0.75), (settings.model, 1.0)]


def test_closing_a_session_deletes_its_files_and_uploads(
    models: Dict[str, DemoModel], tmp_path: Path
) -> None:
    controller = DemoController(models, export_dir=tmp_path / "exports")
    session = DemoSession()
    settings = Settings(model=_student(models))
    upload_dir = tmp_path / "gradio" / "abc123"
    upload_dir.mkdir(parents=True)
    upload = upload_dir / "photo.png"
    Image.fromarray(example_image(1)[0]).save(upload)
    session.uploads.append(upload)
    controller.load(session, upload, settings)
    controller.click(session, settings, 300, 200)
    files, _ = controller.export(session, settings)
    workspace = files[0].parents[1]
    assert workspace.parent == tmp_path / "exports" and files[0].is_file()
    session.close()
    assert not workspace.exists() and not upload.exists() and not upload_dir.exists()
    assert session.image is None and not session.cache and session.prediction is None
    # A session dropped without close (Gradio's session cap) takes its folder when collected.
    # Its uploads go with it too.
    dropped = DemoSession()
    dropped_upload = tmp_path / "gradio" / "def456" / "photo.png"
    dropped_upload.parent.mkdir(parents=True)
    Image.fromarray(example_image(1)[0]).save(dropped_upload)
    dropped.add_upload(dropped_upload)
    controller.load(dropped, dropped_upload, settings)
    controller.click(dropped, settings, 300, 200)
    folder = controller.export(dropped, settings)[0][0].parents[1]
    assert folder.is_dir() and dropped_upload.is_file()
    del dropped
    gc.collect()
    assert not dropped_upload.exists() and not dropped_upload.parent.exists()
    assert not folder.exists()


def test_page_sets_the_bounds(models: Dict[str, DemoModel], tmp_path: Path) -> None:
    bounds = Bounds(max_sessions=5, session_ttl=42.0, file_max_age=7200, encodings_per_session=3)
    demo = build_demo(models, EXAMPLES, tmp_path, bounds)
    assert demo.delete_cache == (600, 7200)
    (state,) = [b for b in demo.blocks.values() if type(b).__name__ == "State"]
    assert state.time_to_live == 42.0
    session = DemoSession()
    folder = session.workspace(tmp_path)
    state.delete_callback(session)  # what Gradio calls when the state expires
    assert not folder.exists()
    for bad in ({"max_sessions": 0}, {"session_ttl": -1.0}, {"file_max_age": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            Bounds(**bad)


def _client(url: str, folder: Path) -> Any:
    return gradio_client.Client(url, verbose=False, download_files=str(folder))


def _workspaces(root: Path) -> List[Path]:
    return sorted(p for p in root.glob("biglittle-sam-demo-*") if p.is_dir())


def _load_and_export(client: Any, image: Path) -> None:
    client.predict(gradio_client.handle_file(str(image)), api_name="/load_image")
    client.predict('{"points": [[60, 40, 1]]}', api_name="/prompts")
    client.predict(api_name="/export")


def _wait(condition: Any, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


@pytest.fixture()
def state_clock(monkeypatch: pytest.MonkeyPatch) -> Callable[[float], None]:
    """Stop the clock by which Gradio expires session state; returns ``advance(seconds)``. A
    session then expires when the test moves the clock past its time to live, not when a slow
    machine takes that long between two requests."""
    from gradio import state_holder  # reads datetime.datetime.now() to expire gr.State values

    now = [datetime.datetime.now()]

    class StoppedClock(datetime.datetime):
        @classmethod
        def now(cls, tz: Any = None) -> datetime.datetime:  # type: ignore[override]
            return now[0]

    # Fails here (raising=True) if a Gradio upgrade drops state_holder's datetime import.
    monkeypatch.setattr(state_holder, "datetime", types.SimpleNamespace(datetime=StoppedClock))

    def advance(seconds: float) -> None:
        now[0] += datetime.timedelta(seconds=seconds)

    return advance


def test_idle_sessions_expire_with_their_files(
    models: Dict[str, DemoModel], tmp_path: Path, state_clock: Callable[[float], None]
) -> None:
    gradio_utils = pytest.importorskip("gradio.utils")
    exports = tmp_path / "exports"
    # A unique name, to find the upload in Gradio's cache folder.
    upload = tmp_path / f"probe_{uuid.uuid4().hex}.png"
    Image.fromarray(example_image(1)[0]).save(upload)
    ttl = 5.0
    with running_demo(models, exports, Bounds(session_ttl=ttl)) as url:
        client = _client(url, tmp_path / "downloads")
        _load_and_export(client, upload)
        cached = list(Path(gradio_utils.get_upload_folder()).glob(f"*/{upload.name}"))
        assert cached and _workspaces(exports)
        state_clock(ttl + 1.0)  # the session has been idle for longer than its time to live
        # Gradio's expiry loop closes the session on the server's thread, and close() removes
        # the folder first, then the uploads: wait for each, not for the folder alone.
        assert _wait(lambda: not _workspaces(exports)), "the idle session's folder stayed"
        assert _wait(lambda: not any(map(Path.exists, cached))), "the idle session's upload stayed"
        out = client.predict('{"points": [[5, 5, 1]]}', api_name="/prompts")
        assert out[-1] == NO_IMAGE  # its state is gone too


def test_session_cap_drops_the_least_recently_used(
    models: Dict[str, DemoModel], tmp_path: Path
) -> None:
    exports = tmp_path / "exports"
    with running_demo(models, exports, Bounds(max_sessions=1)) as url:
        first, second = _client(url, tmp_path / "a"), _client(url, tmp_path / "b")
        _load_and_export(first, EXAMPLES / "shapes_1.png")
        (first_folder,) = _workspaces(exports)
        second.predict(
            gradio_client.handle_file(str(EXAMPLES / "shapes_2.png")), api_name="/load_image"
        )
        gc.collect()
        assert _wait(lambda: not first_folder.exists(), 10), "the dropped session's folder stayed"
        out = first.predict('{"points": [[5, 5, 1]]}', api_name="/prompts")
        assert out[-1] == NO_IMAGE  # its state is gone: a new session
