"""demo/app.py as a command: argument parsing, model loading in main only, safe launch settings."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Dict, List

import gradio as gr
import pytest
import torch

from biglittle_sam import model_config, sam_model_registry, save_model_checkpoint
from biglittle_sam.demo import models as models_module
from biglittle_sam.demo.models import load_demo_model, load_models, parse_checkpoint_arg
from biglittle_sam.demo.page import Bounds
from demo import app


def test_import_loads_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: List[Any] = []
    monkeypatch.setattr(models_module, "load_demo_model", lambda *a, **k: calls.append(a))
    importlib.reload(app)
    assert calls == []


def test_defaults_are_local_and_private() -> None:
    args = app.parse_args([])
    assert args.host == "127.0.0.1" and args.share is False and args.port is None
    assert args.checkpoint is None and args.sam_checkpoint is None
    assert args.device == ("cuda:0" if torch.cuda.is_available() else "cpu")  # --device auto
    args = app.parse_args(["--checkpoint", "a=x.pth", "--checkpoint", "y.pth", "--port", "9"])
    assert args.checkpoint == ["a=x.pth", "y.pth"] and args.port == 9


def test_parse_checkpoint_arg(tmp_path: Path) -> None:
    assert parse_checkpoint_arg("bl_b=/m/x.pth") == ("bl_b", Path("/m/x.pth"))
    assert parse_checkpoint_arg("/m/x.pth") == (None, Path("/m/x.pth"))
    odd = tmp_path / "a=b.pth"
    odd.write_bytes(b"")
    assert parse_checkpoint_arg(str(odd)) == (None, odd)  # an existing file wins over NAME=


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    """A plain vit_tiny and a bl_tiny student, written once: the tests only read them."""
    folder = tmp_path_factory.mktemp("app_checkpoints")
    torch.manual_seed(0)
    sam = sam_model_registry["vit_tiny"]()
    sam_path = folder / "sam.pth"
    torch.save(sam.state_dict(), sam_path)
    bl = sam_model_registry["bl_tiny"](
        sam_checkpoint=sam_path, keep_ratio=0.25, training_free=False
    )
    bl_path = folder / "student.pth"
    save_model_checkpoint(bl_path, bl, model_config(bl), teacher="vit_tiny:sam.pth")
    return {"sam": sam_path, "bl": bl_path}


def test_load_models_recognises_both_kinds(checkpoints: Dict[str, Path], tmp_path: Path) -> None:
    models = load_models(
        [f"student={checkpoints['bl']}"],
        [str(checkpoints["sam"])],
        builtin=True,
        assets=tmp_path / "no_assets",
    )
    assert list(models) == ["sam", "student"]
    assert not models["sam"].is_biglittle and models["student"].is_biglittle
    assert models["student"].default_keep_ratio == 0.25
    assert models["student"].same_size_as(models["sam"])
    assert models["student"].gmacs(0.25) < models["student"].teacher_gmacs()
    assert models["sam"].gmacs(0.25) == pytest.approx(models["student"].teacher_gmacs())
    twice = load_models([str(checkpoints["bl"]), str(checkpoints["bl"])], assets=tmp_path / "x")
    assert list(twice) == ["student", "student (2)"]


def test_builtin_models_come_from_assets(checkpoints: Dict[str, Path], tmp_path: Path) -> None:
    assets = tmp_path / "assets"
    assets.mkdir()
    (assets / "toy_sam.pth").write_bytes(checkpoints["sam"].read_bytes())
    (assets / "toy_student.pth").write_bytes(checkpoints["bl"].read_bytes())
    models = load_models(assets=assets)
    assert list(models) == ["toy_sam (built-in)", "toy_student (built-in)"]


def test_unusable_checkpoints_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(models_module.CheckpointError, match="no such checkpoint"):
        load_demo_model(tmp_path / "missing.pth")
    odd = tmp_path / "odd.pth"
    torch.save({"image_encoder.foo": torch.zeros(3)}, odd)
    with pytest.raises(models_module.CheckpointError, match="cannot tell which model"):
        load_demo_model(odd)


def test_main_exits_with_a_message_on_bad_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as info:
        app.main(["--no-builtin", "--checkpoint", str(tmp_path / "nope.pth")])
    assert info.value.code == 2 and "no such checkpoint file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        app.main(["--no-builtin"])
    assert info.value.code == 2 and "no models to serve" in capsys.readouterr().err


def test_main_launches_on_localhost_without_extra_paths(
    checkpoints: Dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    launched: Dict[str, Any] = {}
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kw: launched.update(kw))
    monkeypatch.setattr(torch, "set_num_threads", lambda n: launched.update(threads=n))
    app.main(
        [
            "--no-builtin",
            "--sam-checkpoint",
            str(checkpoints["sam"]),
            "--checkpoint",
            f"student={checkpoints['bl']}",
            "--port",
            "7999",
            "--threads",
            "1",
        ]
    )
    assert launched["server_name"] == "127.0.0.1" and launched["server_port"] == 7999
    assert launched["share"] is False and launched["threads"] == 1
    assert "allowed_paths" not in launched


def test_bounds_flags(
    checkpoints: Dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    assert app.bounds_from_args(app.parse_args([])) == Bounds()
    args = app.parse_args(
        ["--max-sessions", "3", "--session-ttl", "90", "--file-max-age", "600"]
        + ["--encodings-per-session", "2"]
    )
    assert app.bounds_from_args(args) == Bounds(3, 90.0, 600, 2)
    for flag, value in (("--max-sessions", "0"), ("--session-ttl", "-5"), ("--file-max-age", "x")):
        with pytest.raises(SystemExit) as info:
            app.parse_args([flag, value])
        assert info.value.code == 2 and "expected a positive number" in capsys.readouterr().err
    launched: Dict[str, Any] = {}
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kw: launched.update(kw, blocks=self))
    app.main(
        ["--no-builtin", "--checkpoint", f"student={checkpoints['bl']}", "--max-sessions", "3"]
        + ["--session-ttl", "90", "--file-max-age", "600"]
    )
    assert launched["state_session_capacity"] == 3
    blocks = launched["blocks"]
    assert blocks.delete_cache == (600, 600)
    (state,) = [b for b in blocks.blocks.values() if isinstance(b, gr.State)]
    assert state.time_to_live == 90.0
