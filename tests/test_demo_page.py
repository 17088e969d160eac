"""The Gradio page, without a server: its events, the handler factory, labels and messages."""

from __future__ import annotations

import dataclasses
import inspect
import typing
from pathlib import Path
from typing import Any, Dict, List, Tuple

import gradio as gr
import pytest

from biglittle_sam.demo import page as page_module
from biglittle_sam.demo.models import DemoModel
from biglittle_sam.demo.page import TOY_NOTE, Bounds, build_demo, make_handler, model_label
from biglittle_sam.demo.session import DemoSession, Settings, View

from .demo_fixtures import EXAMPLES, random_models


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, DemoModel]:
    return random_models(tmp_path_factory.mktemp("page_models"))


def _events(demo: gr.Blocks) -> Tuple[Dict[int, str], List[Dict[str, Any]]]:
    config = demo.get_config_file()
    ids = {c["id"]: c.get("props", {}).get("elem_id") for c in config["components"]}
    return ids, config["dependencies"]


def test_keep_ratio_encodes_on_release_only(models: Dict[str, DemoModel], tmp_path: Path) -> None:
    ids, events = _events(build_demo(models, EXAMPLES, tmp_path))
    on_slider = [
        (i, d)
        for i, d in enumerate(events)
        if any(ids.get(t[0]) == "keep-ratio" for t in d["targets"])
    ]
    assert [t[1] for _, d in on_slider for t in d["targets"]] == ["release"]
    (encode,) = [d for d in events if d["api_name"] == "keep_ratio"]
    assert encode["trigger_after"] == on_slider[0][0]  # the encode follows the release


def test_slow_events_say_what_runs_first(models: Dict[str, DemoModel], tmp_path: Path) -> None:
    demo = build_demo(models, EXAMPLES, tmp_path)
    ids, events = _events(demo)
    for api_name in ("load_image", "keep_ratio", "model", "everything"):
        (slow,) = [d for d in events if d["api_name"] == api_name]
        first = events[slow["trigger_after"]]
        assert first["queue"] is False and ids.get(first["outputs"][0]) == "message"
        text = demo.fns[slow["trigger_after"]].fn("tiny big.LITTLE", 0.25)
        assert text.startswith("**Working:**") and "tiny big.LITTLE" in text


def test_toy_models_are_labelled(models: Dict[str, DemoModel], tmp_path: Path) -> None:
    given = next(iter(models.values()))
    toy = dataclasses.replace(given, name="toy_student (built-in)", builtin=True)
    assert model_label(given) == given.name
    assert model_label(toy) == "toy_student (built-in): toy, synthetic shapes"
    texts = [
        c.get("props", {}).get("value")
        for c in build_demo({toy.name: toy}, None, tmp_path).get_config_file()["components"]
    ]
    assert TOY_NOTE in texts and "--checkpoint" in TOY_NOTE
    texts = [
        c.get("props", {}).get("value") for c in build_demo(models).get_config_file()["components"]
    ]
    assert TOY_NOTE not in texts


def test_one_factory_makes_every_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: List[Tuple[Any, ...]] = []
    toasts: List[Tuple[str, str]] = []
    monkeypatch.setattr(page_module.gr, "Info", lambda text, title: toasts.append((title, text)))

    def action(session: DemoSession, settings: Settings, report: Any, *values: Any) -> View:
        report(0.5, "halfway")
        calls.append((session, settings, values))
        return View(canvas=None, message="Could not load the image: x.png: broken", level="error")

    handler = make_handler(
        "on_test", action, extras=("text",), select=True, bounds=Bounds(encodings_per_session=2)
    )
    signature = inspect.signature(handler)
    assert list(signature.parameters) == [
        "state_value",
        "text",
        "m",
        "r",
        "md",
        "mm",
        "h",
        "c",
        "p",
        "evt",
        "progress",
    ]
    assert isinstance(signature.parameters["progress"].default, gr.Progress)
    assert typing.get_type_hints(handler)["evt"] is gr.SelectData  # Gradio injects the click
    progress: List[Tuple[float, str]] = []
    out = handler(
        None,
        "{}",
        "m1",
        0.25,
        "Negative point",
        False,
        True,
        False,
        None,
        "EVT",
        lambda f, desc: progress.append((f, desc)),
    )
    session, settings, values = calls[0]
    assert isinstance(session, DemoSession) and session.cache_entries == 2 and out[0] is session
    assert settings == Settings("m1", 0.25, "Negative point", False, True, False, None)
    assert values == ("{}", "EVT") and progress == [(0.5, "halfway")]
    # An error is shown in the message line, naming what failed; no toast titled "Warning".
    assert out[-1] == "**Error:** Could not load the image: x.png: broken" and toasts == []
    assert out[6] is None  # no download links
