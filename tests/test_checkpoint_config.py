"""A checkpoint's stored config is validated, and bounded by its own tensors, before anything is
built; refusals say what was refused and never suggest an unsafe load."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Dict

import pytest
import torch

from biglittle_sam import build_sam, sam_model_registry
from biglittle_sam.build_sam import build_sam_from_config, load_sam
from biglittle_sam.checkpoint import (
    CheckpointError,
    CheckpointNotFoundError,
    parameter_floor,
    read_checkpoint,
    tensor_elements,
)
from biglittle_sam.config import BIGLITTLE_CONFIGS, SAM_CONFIGS, config_to_dict
from biglittle_sam.convert import convert_checkpoint
from biglittle_sam.demo.models import load_demo_model


@pytest.fixture(scope="module")
def bl_payload() -> Dict[str, Any]:
    """A bl_tiny checkpoint payload, whose config the tests below spoil."""
    config = BIGLITTLE_CONFIGS["bl_tiny"]
    sam = build_sam_from_config(config)
    return {"model": sam.state_dict(), "config": config_to_dict(config), "teacher": "vit_tiny"}


def _write(tmp_path: Path, payload: Dict[str, Any], **config: Any) -> Path:
    path = tmp_path / "spoiled.pth"
    torch.save({**payload, "config": {**payload["config"], **config}}, path)
    return path


@pytest.fixture()
def nothing_built(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a model is built: validation must come first."""

    def refuse(config: Any) -> None:
        raise AssertionError(f"a model was built from {config}")

    monkeypatch.setattr(build_sam, "build_sam_from_config", refuse)


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("patch_size", 0, "'patch_size' must be a positive integer"),
        ("little_heads", 0, "'little_heads' must be a positive integer"),
        ("img_size", 0, "'img_size' must be a positive integer"),
        ("embed_dim", "64", "'embed_dim' must be an integer, got '64'"),
        ("depth", 2.0, "'depth' must be an integer"),
        ("mlp_ratio", float("nan"), "'mlp_ratio' must be a finite number"),
        ("use_rel_pos", 1, "'use_rel_pos' must be true or false"),
        ("global_attn_indexes", ["1"], "'global_attn_indexes' must be a list of integers"),
        ("little_window_size", -1, "'little_window_size' must be an integer >= 0"),
        ("decoder_heads", 3, "'decoder_heads' \\(3\\) must divide out_chans / 2"),
        ("mask_in_chans", 2, "'mask_in_chans' must be an integer >= 4"),
        ("num_heads", 3, "embed_dim \\(64\\) must be divisible by num_heads \\(3\\)"),
        ("patch_size", 24, "img_size \\(256\\) must be a multiple of patch_size \\(24\\)"),
    ],
)
def test_bad_stored_config_names_the_field(
    bl_payload: Dict[str, Any], tmp_path: Path, nothing_built: None, field: str, value, expected
) -> None:
    path = _write(tmp_path, bl_payload, **{field: value})
    for load in (
        lambda: sam_model_registry["bl_tiny"](checkpoint=path),
        lambda: load_sam(path),
        lambda: load_demo_model(path),
    ):
        with pytest.raises(CheckpointError, match=f"stored config is not valid: .*{expected}"):
            load()


def test_oversized_config_is_refused_before_anything_is_built(
    bl_payload: Dict[str, Any], tmp_path: Path, nothing_built: None
) -> None:
    # ViT-L sizes over bl_tiny's 0.36 M tensors: the config asks for ~300 M parameters.
    large = dataclasses.replace(
        BIGLITTLE_CONFIGS["bl_l"], name="bl_tiny", img_size=256, decoder_mlp_dim=128
    )
    path = tmp_path / "large.pth"
    torch.save({**bl_payload, "config": config_to_dict(large)}, path)
    with pytest.raises(CheckpointError, match="needs at least .* parameters, but the file's"):
        sam_model_registry["bl_tiny"](checkpoint=path)
    # One wide field is enough: a huge decoder MLP over the same tensors.
    path = _write(tmp_path, bl_payload, decoder_mlp_dim=10**9)
    with pytest.raises(CheckpointError, match="decoder_mlp_dim 1000000000"):
        load_sam(path)
    # A hostile depth costs no time either: the budget is computed without a loop over blocks.
    path = _write(tmp_path, bl_payload, depth=10**15)
    with pytest.raises(CheckpointError, match="depth 1000000000000000"):
        load_sam(path)


def test_shared_storage_does_not_inflate_the_budget() -> None:
    weight = torch.zeros(1000)
    views = {f"w{i}": weight[i * 10 :] for i in range(50)}  # 50 views of one storage
    assert tensor_elements(views) == 1000
    assert tensor_elements({"a": torch.zeros(3), "b": torch.zeros(4, 5)}) == 23


@pytest.mark.parametrize(
    "base, fields",
    [
        (SAM_CONFIGS["vit_tiny"], {}),
        (SAM_CONFIGS["vit_tiny"], {"use_rel_pos": False, "mlp_ratio": 2.5}),
        (BIGLITTLE_CONFIGS["bl_tiny"], {}),
        (BIGLITTLE_CONFIGS["bl_tiny"], {"little_window_size": 4, "little_mlp_ratio": 3.0}),
    ],
)
def test_parameter_floor_never_exceeds_the_model(base, fields) -> None:
    config = dataclasses.replace(base, **fields)
    sam = build_sam_from_config(config)
    held = tensor_elements(sam.state_dict())
    assert 0.9 * held < parameter_floor(config) <= held
    encoder = tensor_elements(sam.image_encoder.state_dict())
    assert parameter_floor(config, encoder_only=True) <= encoder


def test_encoder_only_checkpoint_is_bounded_with_the_sam_file(
    tiny_sam_checkpoint: Path, tmp_path: Path
) -> None:
    student = sam_model_registry["bl_tiny"](sam_checkpoint=tiny_sam_checkpoint, training_free=False)
    config = config_to_dict(BIGLITTLE_CONFIGS["bl_tiny"])
    enc = tmp_path / "encoder.pth"
    torch.save({"model": student.image_encoder.state_dict(), "config": config}, enc)
    convert_checkpoint(enc, tiny_sam_checkpoint, tmp_path / "ok.pth")
    torch.save(
        {"model": student.image_encoder.state_dict(), "config": {**config, "depth": 400}}, enc
    )
    with pytest.raises(CheckpointError, match="needs at least"):
        convert_checkpoint(enc, tiny_sam_checkpoint, tmp_path / "big.pth")
    assert not (tmp_path / "big.pth").exists()


class _Payload:
    """Unpickling this would create a directory."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.mkdir, (self.marker,))


def test_refusal_names_the_blocked_global_and_never_suggests_an_unsafe_load(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "x": _Payload(str(marker))}, path)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    message = str(info.value)
    assert f"'{os.mkdir.__module__}.mkdir'" in message and "refused" in message
    assert "weights_only=False" not in message and "will likely succeed" not in message
    assert "weights_only` set to `False" not in message
    assert not marker.exists()


def test_random_bytes_directory_and_missing_file_are_described_as_what_they_are(
    tmp_path: Path,
) -> None:
    noise = tmp_path / "noise.pth"
    noise.write_bytes(bytes(range(7, 256)) * 8)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(noise)
    message = str(info.value)
    assert "neither a zip archive" in message and "starts with bytes 07 08 09" in message
    assert "pickled" not in message and "weights_only" not in message
    folder = tmp_path / "run"
    folder.mkdir()
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(folder)
    assert "is a directory" in str(info.value) and "not found" not in str(info.value)
    assert not isinstance(info.value, FileNotFoundError)
    with pytest.raises(CheckpointNotFoundError, match="missing.pth: no such checkpoint file"):
        read_checkpoint(tmp_path / "missing.pth")
    assert issubclass(CheckpointNotFoundError, FileNotFoundError)
