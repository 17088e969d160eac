"""One model-spec parser and one checkpoint loader, shared by every tool."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from biglittle_sam import (
    BatchedSamPredictor,
    SamAutomaticMaskGenerator,
    SamPredictor,
    get_keep_ratio,
    load_sam,
    model_config,
    sam_model_registry,
    save_model_checkpoint,
)
from biglittle_sam.build_sam import build_model_from_spec, is_official_sam_checkpoint
from biglittle_sam.checkpoint import CheckpointError
from biglittle_sam.model_spec import (
    MODEL_NAMES,
    ModelSpecError,
    model_spec_arg,
    parse_model_spec,
    spec_with,
    split_named_path,
)
from tools import export_onnx


@pytest.fixture(scope="module")
def bl_checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_sam_checkpoint: Path) -> Path:
    bl = sam_model_registry["bl_tiny"](sam_checkpoint=tiny_sam_checkpoint, keep_ratio=0.25)
    path = tmp_path_factory.mktemp("spec") / "student.pth"
    return save_model_checkpoint(path, bl, model_config(bl), teacher="vit_tiny:sam.pth")


def test_model_names_are_the_registry() -> None:
    assert set(MODEL_NAMES) == set(sam_model_registry)


def test_flags_join_a_spec_with_the_same_checks() -> None:
    spec = spec_with(parse_model_spec("bl_tiny"), "x.pth", 0.5)
    assert (spec.name, spec.checkpoint, spec.keep_ratio) == ("bl_tiny", "x.pth", 0.5)
    assert spec_with(parse_model_spec("bl_tiny=y.pth@0.25")) == parse_model_spec(
        "bl_tiny=y.pth@0.25"
    )
    with pytest.raises(ModelSpecError, match="names its checkpoint already"):
        spec_with(parse_model_spec("bl_tiny=y.pth"), "x.pth")
    with pytest.raises(ModelSpecError, match="sets its keep ratio already"):
        spec_with(parse_model_spec("bl_tiny@0.5"), keep_ratio=0.25)
    with pytest.raises(ModelSpecError, match="not a number in \\(0, 1\\]"):
        spec_with(parse_model_spec("bl_tiny"), keep_ratio=2.0)
    with pytest.raises(ModelSpecError, match="plain SAM"):
        spec_with(parse_model_spec("vit_tiny"), keep_ratio=0.5)
    with pytest.raises(argparse.ArgumentTypeError, match="NAME\\[=CHECKPOINT\\]\\[@KEEP_RATIO\\]"):
        model_spec_arg("bl_b=")


def test_split_named_path(tmp_path: Path) -> None:
    assert split_named_path("bl_b=/m/x.pth") == ("bl_b", Path("/m/x.pth"))
    assert split_named_path(Path("/m/x.pth")) == (None, Path("/m/x.pth"))
    odd = tmp_path / "a=b.pth"
    odd.write_bytes(b"")
    assert split_named_path(str(odd)) == (None, odd)


def test_load_sam_takes_a_path_or_name_equals_path(
    tiny_sam_checkpoint: Path, bl_checkpoint: Path
) -> None:
    sam, config, meta = load_sam(bl_checkpoint)
    assert config.name == "bl_tiny" and get_keep_ratio(sam) == 0.25
    assert sam.image_encoder.teacher == "vit_tiny:sam.pth" and meta["format"] == "biglittle-sam"
    _, config, _ = load_sam(f"vit_tiny={tiny_sam_checkpoint}")
    assert config.name == "vit_tiny"
    with pytest.raises(CheckpointError, match="holds a 'bl_tiny' model, not 'vit_tiny'"):
        load_sam(f"vit_tiny={bl_checkpoint}")
    with pytest.raises(CheckpointError, match="unknown model 'student'"):
        load_sam(f"student={bl_checkpoint}")
    with pytest.raises(CheckpointError, match="pass it as sam_checkpoint"):
        load_sam(tiny_sam_checkpoint, "bl_tiny")


def test_spec_builds_inherit_from_official_files_and_load_others_strictly(
    tiny_sam_checkpoint: Path, bl_checkpoint: Path, tmp_path: Path
) -> None:
    assert is_official_sam_checkpoint(tiny_sam_checkpoint)
    assert not is_official_sam_checkpoint(bl_checkpoint)
    inherited = build_model_from_spec(parse_model_spec(f"bl_tiny={tiny_sam_checkpoint}@0.5"))
    assert inherited.image_encoder.teacher == f"vit_tiny:{tiny_sam_checkpoint.name}"
    loaded = build_model_from_spec(parse_model_spec(f"bl_tiny={bl_checkpoint}"))
    assert get_keep_ratio(loaded) == 0.25
    flags = build_model_from_spec(parse_model_spec("bl_tiny"), sam_checkpoint=tiny_sam_checkpoint)
    for a, b in zip(flags.parameters(), inherited.parameters()):
        assert torch.equal(a, b)  # the same seed draws the same fresh weights
    with pytest.raises(ModelSpecError, match="no such checkpoint file"):
        build_model_from_spec(parse_model_spec(f"vit_tiny={tmp_path / 'missing.pth'}"))
    with pytest.raises(ModelSpecError, match="for vit_tiny give it as the checkpoint"):
        build_model_from_spec(parse_model_spec("vit_tiny"), sam_checkpoint=tiny_sam_checkpoint)


def test_export_cli_takes_a_spec_or_its_parts(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    for bad, message in (
        (["--model", "bl_tiny@0.5", "--keep-ratio", "0.25"], "sets its keep ratio already"),
        (["--model", "bl_q"], "unknown model 'bl_q'"),
        (["--model", f"bl_tiny={tmp_path / 'nope.pth'}"], "no such checkpoint file"),
    ):
        with pytest.raises(SystemExit) as info:
            export_onnx.main(bad + ["--out-dir", str(tmp_path)])
        assert info.value.code == 2 and message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_the_swap_is_one_import(tiny_sam_checkpoint: Path) -> None:
    import segment_anything

    assert SamPredictor is segment_anything.SamPredictor
    assert SamAutomaticMaskGenerator is segment_anything.SamAutomaticMaskGenerator
    sam = sam_model_registry["bl_tiny"](sam_checkpoint=tiny_sam_checkpoint, keep_ratio=0.5)
    assert isinstance(BatchedSamPredictor(sam), SamPredictor)
