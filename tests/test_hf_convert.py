"""Checkpoints between segment_anything's layout and transformers': renaming only, bit-exact both
ways, for plain SAM and for big.LITTLE models (learned and training-free), through the library
and through ``biglittle-sam-convert to-hf`` / ``from-hf``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("transformers", minversion="5.0")

from biglittle_sam_tools import convert_checkpoint as cli  # noqa: E402
from transformers import AutoModel, SamModel  # noqa: E402

import biglittle_sam.hf as blhf  # noqa: E402
from biglittle_sam import load_sam, sam_model_registry, save_model_checkpoint  # noqa: E402
from biglittle_sam.config import SAM_CONFIGS  # noqa: E402
from biglittle_sam.hf.convert import processor_for  # noqa: E402
from biglittle_sam.hf.layout import LayoutError  # noqa: E402

from .conftest import randomize_  # noqa: E402


def equal_states(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_every_sam_weight_has_one_transformers_name(tiny_sam) -> None:
    stock = SamModel(blhf.hf_config_from_sam(SAM_CONFIGS["vit_tiny"]))
    renamed = blhf.sam_to_hf_state(tiny_sam.state_dict())
    expected = stock.state_dict()
    assert set(renamed) == set(expected)
    assert all(renamed[k].shape == expected[k].shape for k in expected)
    assert equal_states(blhf.hf_to_sam_state(renamed), tiny_sam.state_dict())


def test_unknown_keys_are_named(tiny_sam) -> None:
    state = dict(tiny_sam.state_dict())
    state["image_encoder.blocks.0.adapter.weight"] = torch.zeros(1)
    with pytest.raises(LayoutError, match=r"image_encoder\.blocks\.0\.adapter\.weight"):
        blhf.sam_to_hf_state(state)
    hf = blhf.sam_to_hf_state(tiny_sam.state_dict())
    hf["prompt_encoder.shared_embedding.positional_embedding"] = torch.zeros(2, 16)
    with pytest.raises(LayoutError, match="must be tied"):
        blhf.hf_to_sam_state(hf)


def test_a_converted_sam_gives_segment_anythings_masks(tiny_sam) -> None:
    model = blhf.from_sam(tiny_sam)
    assert type(model) is SamModel
    torch.manual_seed(0)
    x = torch.randn(1, 3, 256, 256)
    boxes = torch.tensor([[[20.0, 30.0, 200.0, 180.0]]])
    with torch.no_grad():
        embeddings = tiny_sam.image_encoder(x)
        sparse, dense = tiny_sam.prompt_encoder(points=None, boxes=boxes[0], masks=None)
        masks, iou = tiny_sam.mask_decoder(
            embeddings, tiny_sam.prompt_encoder.get_dense_pe(), sparse, dense, True
        )
        out = model(pixel_values=x, input_boxes=boxes)
    assert (out.pred_masks[0, 0] - masks[0]).abs().max() <= 1e-4 * masks.abs().max()
    assert (out.iou_scores[0, 0] - iou[0]).abs().max() <= 1e-4


def test_a_learned_biglittle_model_converts_both_ways(tiny_bl) -> None:
    randomize_(tiny_bl.image_encoder, std=0.05, seed=3)  # E-blocks and routers away from init
    hf = blhf.from_sam(tiny_bl)
    assert type(hf) is blhf.BigLittleSamModel and hf.keep_ratio == 0.5
    assert hf.config.vision_config.biglittle["training_free"] is False
    x = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        torch.testing.assert_close(hf.get_image_embeddings(x), tiny_bl.image_encoder(x))
    back = blhf.to_sam(hf)
    assert back.image_encoder.config == tiny_bl.image_encoder.config
    assert equal_states(back.state_dict(), tiny_bl.state_dict())


def test_cli_round_trip_of_an_official_file_is_bit_exact(tiny_sam_checkpoint, tmp_path) -> None:
    folder, back = tmp_path / "hf", tmp_path / "back.pth"
    cli.main(["to-hf", "--checkpoint", str(tiny_sam_checkpoint), "--output-dir", str(folder)])
    assert json.loads((folder / "config.json").read_text())["model_type"] == "sam"
    assert type(AutoModel.from_pretrained(folder)) is SamModel
    cli.main(["from-hf", "--hf-dir", str(folder), "--output", str(back)])
    original = torch.load(tiny_sam_checkpoint, map_location="cpu", weights_only=True)
    written = torch.load(back, map_location="cpu", weights_only=True)
    assert equal_states(written, original)  # the official layout: a bare state dict
    sam_model_registry["vit_tiny"](checkpoint=back)


def test_cli_round_trip_of_a_biglittle_checkpoint(tiny_bl, tmp_path) -> None:
    randomize_(tiny_bl.image_encoder, std=0.05, seed=4)
    path = tmp_path / "bl.pth"
    save_model_checkpoint(path, tiny_bl, tiny_bl.image_encoder.config, teacher="vit_tiny:x.pth")
    folder, back = tmp_path / "hf", tmp_path / "back.pth"
    cli.main(["to-hf", "--checkpoint", str(path), "--output-dir", str(folder)])
    cli.main(["from-hf", "--hf-dir", str(folder), "--output", str(back)])
    sam, config, meta = load_sam(back)
    assert config == tiny_bl.image_encoder.config and meta["teacher"] == "vit_tiny:x.pth"
    assert equal_states(sam.state_dict(), tiny_bl.state_dict())


def test_from_checkpoint_builds_the_transformers_model_in_memory(tiny_bl, tmp_path) -> None:
    randomize_(tiny_bl.image_encoder, std=0.05, seed=5)
    path = tmp_path / "bl.pth"
    save_model_checkpoint(path, tiny_bl, tiny_bl.image_encoder.config)
    model = blhf.from_checkpoint(path, keep_ratio=0.25)
    assert type(model) is blhf.BigLittleSamModel and model.keep_ratio == 0.25
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad(), tiny_bl.image_encoder.keep_ratio_context(0.25):
        torch.testing.assert_close(model.get_image_embeddings(x), tiny_bl.image_encoder(x))


def test_cli_training_free_from_an_official_file(tiny_sam_checkpoint, tmp_path) -> None:
    folder = tmp_path / "hf"
    argv = ["to-hf", "--checkpoint", str(tiny_sam_checkpoint), "--model", "bl_tiny"]
    cli.main(argv + ["--keep-ratio", "0.25", "--output-dir", str(folder)])
    model = AutoModel.from_pretrained(folder)
    assert type(model) is blhf.BigLittleSamModel and model.keep_ratio == 0.25
    assert model.config.vision_config.biglittle["training_free"] is True
    # The same encoder as segment_anything's training-free bl_tiny on the same file.
    sam = sam_model_registry["bl_tiny"](checkpoint=tiny_sam_checkpoint, keep_ratio=0.25)
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        torch.testing.assert_close(model.get_image_embeddings(x), sam.image_encoder(x))
    assert (folder / "processor_config.json").is_file() or (
        folder / "preprocessor_config.json"
    ).is_file()


def test_cli_refuses_to_overwrite_and_names_bad_folders(
    tiny_sam_checkpoint, tmp_path, capsys
) -> None:
    folder = tmp_path / "taken"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit) as done:
        cli.main(["to-hf", "--checkpoint", str(tiny_sam_checkpoint), "--output-dir", str(folder)])
    assert done.value.code == 2 and "not an empty folder" in capsys.readouterr().err
    assert (folder / "keep.txt").read_text() == "mine"
    with pytest.raises(SystemExit) as done:
        cli.main(["from-hf", "--hf-dir", str(tmp_path), "--output", str(tmp_path / "x.pth")])
    assert done.value.code == 2 and "no config.json" in capsys.readouterr().err
    assert not (tmp_path / "x.pth").exists()


def test_the_merge_is_still_the_default_command(capsys) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    assert "--encoder" in text and "to-hf" in text
    with pytest.raises(SystemExit):
        cli.main(["to-hf", "--help"])
    assert "--output-dir" in capsys.readouterr().out


def test_processor_matches_the_model_size() -> None:
    processor = processor_for(256)
    image = (np.random.RandomState(0).rand(100, 200, 3) * 255).astype("uint8")
    inputs = processor(images=image, return_tensors="pt")
    assert tuple(inputs["pixel_values"].shape) == (1, 3, 256, 256)
    assert tuple(inputs["reshaped_input_sizes"][0].tolist()) == (128, 256)
    assert inputs["pixel_values"][0, :, 128:].abs().max() == 0  # SAM's zero padding


def test_a_global_context_student_converts_both_ways() -> None:
    sam = sam_model_registry["bl_tiny"](global_context="pooled", global_context_pool=4)
    randomize_(sam.image_encoder, std=0.05, seed=6)
    hf = blhf.from_sam(sam)
    assert hf.config.vision_config.biglittle["global_context"] == "pooled"
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        torch.testing.assert_close(hf.get_image_embeddings(x), sam.image_encoder(x))
    assert equal_states(blhf.to_sam(hf).state_dict(), sam.state_dict())
