"""The training-free layout with a learned correction (``little_correction``): it starts exactly at
the training-free mode, is SAM at r = 1, saves and loads as checkpoint version 3, and distils."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from biglittle_sam import sam_model_registry
from biglittle_sam.build_sam import keep_ratio_context
from biglittle_sam.checkpoint import read_checkpoint, save_model_checkpoint
from biglittle_sam.config import config_from_dict, config_to_dict
from biglittle_sam.flops import encoder_macs
from biglittle_sam.modeling.copy_little import CopyLittleBlock
from biglittle_sam.modeling.training_free import routed_layers
from biglittle_sam.train.models import build_student
from biglittle_sam.train.parts import select_trainable

from .conftest import randomize_

CORRECTED = {"training_free": True, "little_correction": True}


def _images(n: int, seed: int = 3, size: int = 256) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _pair(tiny_sam_checkpoint: Path) -> tuple:
    free = sam_model_registry["bl_tiny"](checkpoint=tiny_sam_checkpoint)
    sam, _, _ = build_student("bl_tiny", tiny_sam_checkpoint, overrides=CORRECTED, seed=1)
    return free.eval(), sam.eval()


def test_a_fresh_model_is_the_training_free_mode_and_sam_at_one(
    tiny_sam_checkpoint: Path,
) -> None:
    free, sam = _pair(tiny_sam_checkpoint)
    schedule = routed_layers(sam.image_encoder.config)
    kinds = [isinstance(b, CopyLittleBlock) for b in sam.image_encoder.blocks]
    assert kinds == list(schedule) and any(kinds)  # routed layers only (the first runs densely)
    plain = sam_model_registry["vit_tiny"](checkpoint=tiny_sam_checkpoint).eval()
    x = _images(2)
    with torch.no_grad():
        for ratio in (0.5, 0.25, 0.1):
            with keep_ratio_context(free.image_encoder, ratio):
                expected = free.image_encoder(x)
            with keep_ratio_context(sam.image_encoder, ratio):
                assert torch.equal(sam.image_encoder(x), expected)
        # r = 1: SAM's blocks alone, even with a trained (non-zero) E-block and gate.
        for blk in sam.image_encoder.blocks:
            if isinstance(blk, CopyLittleBlock):
                randomize_(blk.little, std=0.3)
                blk.context.gate.fill_(0.5)
        with keep_ratio_context(sam.image_encoder, 1.0):
            torch.testing.assert_close(sam.image_encoder(x), plain.image_encoder(x))
        with keep_ratio_context(sam.image_encoder, 0.5):
            changed = sam.image_encoder(x)
        with keep_ratio_context(free.image_encoder, 0.5):
            assert (changed - free.image_encoder(x)).abs().max() > 1e-3  # the correction acts


def test_checkpoint_version_3_round_trips_and_older_layouts_stay_readable(
    tiny_sam_checkpoint: Path, tmp_path: Path
) -> None:
    _, sam = _pair(tiny_sam_checkpoint)
    for blk in sam.image_encoder.blocks:
        if isinstance(blk, CopyLittleBlock):
            randomize_(blk, std=0.1)
    config = sam.image_encoder.config
    path = save_model_checkpoint(tmp_path / "corrected.pth", sam, config)
    payload = read_checkpoint(path)
    assert payload["version"] == 3 and payload["config"]["little_correction"] is True
    assert any(k.endswith(".context.gate") for k in payload["model"])
    loaded = sam_model_registry["bl_tiny"](checkpoint=path).eval()
    x = _images(1)
    with torch.no_grad(), keep_ratio_context(loaded.image_encoder, 0.25):
        with keep_ratio_context(sam.image_encoder, 0.25):
            assert torch.equal(loaded.image_encoder(x), sam.image_encoder(x))
    # Code from before the field refuses unknown fields: a model without it does not write it.
    plain = sam_model_registry["bl_tiny"](training_free=True).image_encoder.config
    assert "little_correction" not in config_to_dict(plain)
    assert config_from_dict(config_to_dict(config)) == config


def test_the_correction_needs_the_training_free_copy_rule(tiny_sam_checkpoint: Path) -> None:
    with pytest.raises(ValueError, match="little_correction .*training_free=True"):
        sam_model_registry["bl_tiny"](little_correction=True)
    with pytest.raises(ValueError, match="skip_rule 'copy', got .*'identity'"):
        sam_model_registry["bl_tiny"](skip_rule="identity", **CORRECTED)
    with pytest.raises(ValueError, match="little_correction=True adds a learned correction"):
        build_student("bl_tiny", tiny_sam_checkpoint, overrides={"training_free": True})


def _counted(module: torch.nn.Module, ratio, shape=(1, 3, 256, 256)) -> float:
    """MACs torch's FlopCounterMode counts for one input of ``shape`` (explicit attention)."""
    for m in module.modules():
        if hasattr(m, "fused"):
            m.fused = False
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        if ratio is None:
            module(torch.randn(shape))
        else:
            with keep_ratio_context(module, ratio):
                module(torch.randn(shape))
    return counter.get_total_flops() / 2


def test_macs_count_the_e_blocks_and_gates_of_routing_layers_only() -> None:
    free = sam_model_registry["bl_tiny"](training_free=True).image_encoder.config
    sam = sam_model_registry["bl_tiny"](**CORRECTED)
    corrected = sam.image_encoder.config
    assert encoder_macs(corrected, keep_ratio=1.0) == encoder_macs(free, keep_ratio=1.0)
    routed = sum(routed_layers(corrected))
    for ratio in (0.5, 0.1):
        a, b = encoder_macs(free, keep_ratio=ratio), encoder_macs(corrected, keep_ratio=ratio)
        little = sum(p.numel() for p in sam.image_encoder.blocks[1].little.parameters())
        assert b["little"] > routed * (little - 3 * corrected.embed_dim)  # its weights, per token
        grid = corrected.grid_size**2
        assert b["context"] == routed * grid * corrected.embed_dim  # the gate
        assert b["total"] == a["total"] + b["little"] + b["context"]
        # torch's counter (matrix products only): the E-blocks run in the routed layers, once
        # each, and change nothing else; our count adds their LayerNorms on top.
        counted = {
            name: _counted(sam_model_registry["bl_tiny"](**fields).image_encoder, ratio)
            for name, fields in (("free", {"training_free": True}), ("corrected", CORRECTED))
        }
        side = corrected.grid_size
        one = _counted(sam.image_encoder.blocks[1].little, None, (1, side, side, 64))
        assert counted["corrected"] - counted["free"] == routed * one > 0
        assert routed * one < b["little"] < 1.25 * routed * one


def test_the_little_part_trains_e_blocks_and_gates_only(tiny_sam_checkpoint: Path) -> None:
    _, sam = _pair(tiny_sam_checkpoint)
    names = select_trainable(sam, "little")
    assert names and all(".little." in n or n.endswith(".context.gate") for n in names)
    assert any(n.endswith(".context.gate") for n in names)


def test_onnx_encoder_of_a_corrected_model_matches_pytorch(
    tiny_sam_checkpoint: Path, tmp_path: Path
) -> None:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from biglittle_sam.export import compare_image_encoder, export_image_encoder

    _, sam = _pair(tiny_sam_checkpoint)
    for blk in sam.image_encoder.blocks:
        if isinstance(blk, CopyLittleBlock):
            randomize_(blk.little, std=0.1)
    path = export_image_encoder(sam, tmp_path / "corrected.onnx", keep_ratio=0.25)
    assert compare_image_encoder(sam, path, _images(1, seed=5)) < 1e-3  # test_export_onnx's
