"""Registry, inheritance from official SAM checkpoints, strict round trips, and bad checkpoints."""

from __future__ import annotations

import dataclasses
import os
import pickle
from pathlib import Path

import pytest
import torch
from segment_anything.modeling import ImageEncoderViT, Sam

from biglittle_sam import (
    CheckpointError,
    ImageEncoderBigLittle,
    get_keep_ratio,
    sam_model_registry,
    save_model_checkpoint,
    set_keep_ratio,
    swap_image_encoder,
)
from biglittle_sam.checkpoint import describe_state_dict, guess_model_name, read_checkpoint
from biglittle_sam.config import SAM_CONFIGS
from biglittle_sam.convert import convert_checkpoint

from .conftest import randomize_


def test_registry_keys_and_types() -> None:
    expected = {"default", "vit_h", "vit_l", "vit_b", "vit_tiny"}
    expected |= {"bl_b", "bl_b_lite", "bl_l", "bl_h", "bl_tiny"}
    assert set(sam_model_registry) == expected
    for name in ("vit_tiny", "bl_tiny"):
        sam = sam_model_registry[name]()
        assert isinstance(sam, Sam) and not sam.training
    assert isinstance(sam_model_registry["bl_tiny"]().image_encoder, ImageEncoderBigLittle)


def test_upstream_key_delegates_to_segment_anything(tmp_path: Path) -> None:
    sam = sam_model_registry["vit_b"]()
    assert type(sam.image_encoder) is ImageEncoderViT and len(sam.image_encoder.blocks) == 12
    with pytest.raises(ValueError, match="no keep ratio"):
        sam_model_registry["vit_b"](keep_ratio=0.5)
    with pytest.raises(TypeError, match="overrides"):
        sam_model_registry["vit_b"](depth=2)


def test_merged_into_segment_anythings_registry_upstream_keys_still_build(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A pipeline that only knows segment_anything's registry can be given ours by merging it in;
    the upstream keys, which ours delegate to segment_anything, must not then call themselves."""
    import segment_anything

    for name, builder in sam_model_registry.items():
        monkeypatch.setitem(segment_anything.sam_model_registry, name, builder)
    sam = segment_anything.sam_model_registry["vit_b"]()
    assert isinstance(sam.image_encoder, ImageEncoderViT) and sam.image_encoder.img_size == 1024
    student = segment_anything.sam_model_registry["bl_tiny"]()
    assert type(student.image_encoder).__name__ == "ImageEncoderBigLittle"


def test_inherits_every_sam_weight(tiny_sam_checkpoint: Path) -> None:
    official = torch.load(tiny_sam_checkpoint, map_location="cpu", weights_only=True)
    bl = sam_model_registry["bl_tiny"](sam_checkpoint=tiny_sam_checkpoint, training_free=False)
    ours = bl.state_dict()
    for key, value in official.items():
        torch.testing.assert_close(ours[key], value, rtol=0, atol=0)
    new = sorted({k.split(".")[3] for k in set(ours) - set(official)})
    assert new == ["context", "little", "router"]  # context: the global layers only
    assert bl.image_encoder.teacher == f"vit_tiny:{tiny_sam_checkpoint.name}"


def test_full_checkpoint_round_trip(tiny_bl: Sam, tmp_path: Path) -> None:
    randomize_(tiny_bl, std=0.05, seed=3)
    set_keep_ratio(tiny_bl, 0.25)
    path = save_model_checkpoint(
        tmp_path / "bl.pth", tiny_bl, tiny_bl.image_encoder.config, teacher="vit_tiny:x.pth"
    )
    loaded = sam_model_registry["bl_tiny"](checkpoint=path, keep_ratio=0.25)
    assert loaded.image_encoder.teacher == "vit_tiny:x.pth"
    assert get_keep_ratio(loaded) == 0.25
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        torch.testing.assert_close(loaded.image_encoder(x), tiny_bl.image_encoder(x))
    meta = read_checkpoint(path)
    assert meta["config"]["name"] == "bl_tiny" and meta["format"] == "biglittle-sam"


def test_flat_state_dict_loads_strictly(tiny_bl: Sam, tmp_path: Path) -> None:
    path = tmp_path / "flat.pth"
    torch.save(tiny_bl.state_dict(), path)
    sam_model_registry["bl_tiny"](checkpoint=path)
    state = tiny_bl.state_dict()
    state.pop("image_encoder.blocks.0.router.score.weight")
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="missing keys: image_encoder.blocks.0.router"):
        sam_model_registry["bl_tiny"](checkpoint=path)


def test_wrong_size_checkpoint_names_what_it_looks_like(tmp_path: Path) -> None:
    small = sam_model_registry["vit_tiny"](depth=2, global_attn_indexes=(1,))
    path = tmp_path / "other.pth"
    torch.save(small.state_dict(), path)
    with pytest.raises(CheckpointError) as info:
        sam_model_registry["vit_tiny"](checkpoint=path)
    message = str(info.value)
    assert str(path) in message and "missing keys" in message and "2 blocks" in message
    with pytest.raises(CheckpointError, match="does not fit model 'bl_tiny'"):
        sam_model_registry["bl_tiny"](sam_checkpoint=path)


def test_checkpoint_for_another_big_little_model(tiny_bl: Sam, tmp_path: Path) -> None:
    path = save_model_checkpoint(tmp_path / "bl.pth", tiny_bl, tiny_bl.image_encoder.config)
    with pytest.raises(CheckpointError, match="holds a 'bl_tiny' model, not 'bl_b'"):
        sam_model_registry["bl_b"](checkpoint=path)
    with pytest.raises(CheckpointError, match="big.LITTLE checkpoint"):
        sam_model_registry["bl_tiny"](sam_checkpoint=path)


def test_missing_empty_truncated_and_foreign_files(tiny_sam_checkpoint: Path, tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        sam_model_registry["bl_tiny"](sam_checkpoint=tmp_path / "nope.pth")
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        sam_model_registry["vit_tiny"](checkpoint=empty)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(tiny_sam_checkpoint.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="truncated.pth: not a readable"):
        sam_model_registry["vit_tiny"](checkpoint=truncated)
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="notes.pth"):
        sam_model_registry["vit_tiny"](checkpoint=text)
    not_a_dict = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], not_a_dict)
    with pytest.raises(CheckpointError, match="expected a dict"):
        sam_model_registry["vit_tiny"](checkpoint=not_a_dict)


class _Payload:
    """Unpickling this would create a file: the loader must refuse it without running it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.mkdir, (self.marker,))


def test_pickled_code_is_refused_and_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        torch.save({"model": {"w": torch.zeros(1)}, "x": _Payload(str(marker))}, f)
    # Plain pickle too, not only torch's zip container.
    raw = tmp_path / "evil.pkl"
    raw.write_bytes(pickle.dumps(_Payload(str(marker))))
    for p in (path, raw):
        with pytest.raises(CheckpointError, match="refused|not a readable"):
            sam_model_registry["bl_tiny"](checkpoint=p)
    assert not marker.exists()


def test_encoder_only_file_is_explained(tiny_bl: Sam, tmp_path: Path) -> None:
    path = tmp_path / "enc.pth"
    torch.save(tiny_bl.image_encoder.state_dict(), path)
    with pytest.raises(CheckpointError, match="biglittle-sam-convert"):
        sam_model_registry["bl_tiny"](checkpoint=path)


def test_convert_merges_encoder_with_sam(tiny_sam_checkpoint: Path, tmp_path: Path) -> None:
    student = sam_model_registry["bl_tiny"](sam_checkpoint=tiny_sam_checkpoint, training_free=False)
    randomize_(student.image_encoder, std=0.05, seed=7)
    enc_path = tmp_path / "encoder.pth"
    torch.save({"model": student.image_encoder.state_dict(), "teacher": "vit_tiny:t.pth"}, enc_path)
    out = convert_checkpoint(enc_path, tiny_sam_checkpoint, tmp_path / "merged.pth", "bl_tiny")
    merged = sam_model_registry["bl_tiny"](checkpoint=out)
    for key, value in student.state_dict().items():
        torch.testing.assert_close(merged.state_dict()[key], value, rtol=0, atol=0)
    assert read_checkpoint(out)["teacher"] == "vit_tiny:t.pth"
    with pytest.raises(ValueError, match="stores no config"):
        convert_checkpoint(enc_path, tiny_sam_checkpoint, tmp_path / "x.pth")


def test_swap_image_encoder(tiny_sam: Sam) -> None:
    bl = sam_model_registry["bl_tiny"]()
    swapped = swap_image_encoder(tiny_sam, bl.image_encoder)
    assert swapped.image_encoder is bl.image_encoder
    with pytest.raises(ValueError, match="img_size"):
        swap_image_encoder(tiny_sam, sam_model_registry["vit_b"]().image_encoder)


def test_guess_model_name() -> None:
    assert guess_model_name(sam_model_registry["vit_tiny"]().state_dict()) == "vit_tiny"
    bl_state = sam_model_registry["bl_tiny"]().state_dict()
    assert guess_model_name(bl_state) == "bl_tiny"
    assert "big.LITTLE" in describe_state_dict(bl_state)


def test_official_file_as_checkpoint_says_to_use_sam_checkpoint(tiny_sam_checkpoint: Path) -> None:
    with pytest.raises(CheckpointError) as info:
        sam_model_registry["bl_tiny"](checkpoint=tiny_sam_checkpoint, training_free=False)
    message = str(info.value)
    assert "official SAM checkpoint" in message and "pass it as sam_checkpoint=" in message
    assert "not distilled" in message


def test_official_file_of_another_size_names_both_sizes(tiny_sam_checkpoint: Path) -> None:
    for kwargs in ({"checkpoint": tiny_sam_checkpoint}, {"sam_checkpoint": tiny_sam_checkpoint}):
        with pytest.raises(CheckpointError) as info:
            sam_model_registry["bl_b"](**kwargs)
        message = str(info.value)
        assert "vit_tiny (64 wide, 4 blocks)" in message, message
        assert "vit_b" in message and "768 wide" in message and "12 blocks" in message


def test_vit_tiny_loads_a_stored_custom_size_but_not_big_little(
    tiny_bl: Sam, tmp_path: Path
) -> None:
    custom = dataclasses.replace(
        SAM_CONFIGS["vit_tiny"], name="custom", depth=2, global_attn_indexes=(1,)
    )
    sam = sam_model_registry["vit_tiny"](depth=2, global_attn_indexes=(1,))
    path = save_model_checkpoint(tmp_path / "custom.pth", sam, custom)
    assert len(sam_model_registry["vit_tiny"](checkpoint=path).image_encoder.blocks) == 2
    bl_path = save_model_checkpoint(tmp_path / "bl.pth", tiny_bl, tiny_bl.image_encoder.config)
    with pytest.raises(CheckpointError, match="holds a 'bl_tiny' model, not 'vit_tiny'"):
        sam_model_registry["vit_tiny"](checkpoint=bl_path)
