"""The LITTLE-block form of SAM 3's big.LITTLE backbone (``training_free=False``).

The tiny SAM 3 models of tests/test_hf_sam3.py (a ViT 32 wide, 3 layers, an 8 x 8 grid in windows
of 4, layer 1 global), swapped with an E-block 8 wide and a router beside each routed layer. At
keep ratio 1 the fresh E-blocks (gamma 0) change nothing, so the swapped models equal the stock
ones; below 1 the router chooses the tokens, every new parameter learns, the model survives
``save_pretrained`` / ``AutoModel.from_pretrained`` exactly, and its MACs match
``torch.utils.flop_counter``.
"""

from __future__ import annotations

import re
from typing import Any, Dict

import pytest
import torch

pytest.importorskip("transformers", minversion="5.0")

from safetensors.torch import load_file, save_file  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402
from transformers import AutoModel, Sam3ViTConfig, Sam3ViTModel  # noqa: E402

import biglittle_sam.hf as blhf  # noqa: E402
from biglittle_sam.checkpoint import CheckpointError  # noqa: E402
from biglittle_sam.flops import encoder_gmacs, encoder_macs  # noqa: E402

from . import test_hf_sam3 as stock  # noqa: E402
from .test_hf_sam3 import BACKBONE, _widen, close, detect  # noqa: E402

# test_hf_sam3's module fixtures, shared (each module builds its own copy once)
detector, tracker, pixels = stock.detector, stock.tracker, stock.pixels

LITTLE: Dict[str, Any] = dict(training_free=False, little_dim=8, little_heads=2)
NEW = re.compile(r"layers\.\d+\.(little|router)\.")


def little(model: Any, keep_ratio: float = 1.0, **settings: Any) -> Any:
    return blhf.to_biglittle_sam3(model, keep_ratio=keep_ratio, **{**LITTLE, **settings})


def trained(model: Any) -> Any:
    """Draw the new parameters as if trained (gamma too), so they change the output."""
    torch.manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if NEW.search(name):
                p.normal_(0.0, 0.3)
    return model


def backbone(**settings: Any) -> blhf.BigLittleSam3ViTModel:
    stock = Sam3ViTModel._from_config(Sam3ViTConfig(**BACKBONE), attn_implementation="eager")
    return little(_widen(stock), **settings)


def test_little_form_at_ratio_one_equals_stock(detector, tracker, pixels):
    swapped = little(detector)
    assert swapped.config.vision_config.backbone_config.biglittle["training_free"] is False
    ours, stock = swapped.state_dict(), detector.state_dict()
    new = sorted(k for k in ours if k not in stock)
    assert all(NEW.search(k) for k in new) and set(stock) <= set(ours)
    assert {k.split(".")[3] for k in new} == {"1", "2"}  # layer 0 is dense (dense_layers [0])
    assert all(torch.equal(ours[k], v) for k, v in stock.items())
    assert all(not p.any() for k, p in ours.items() if k.endswith("little.gamma"))
    a, b = detect(detector, pixels), detect(swapped, pixels)
    for x, y in zip(a["fpn"], b["fpn"]):
        assert close(x, y)
    assert close(a["masks"], b["masks"]) and close(a["logits"], b["logits"])
    points = torch.tensor([[[[40.0, 70.0]]], [[[90.0, 20.0]]]])
    labels = torch.ones(2, 1, 1, dtype=torch.long)
    track = little(tracker)
    with torch.no_grad():
        c = tracker(pixel_values=pixels, input_points=points, input_labels=labels)
        d = track(pixel_values=pixels, input_points=points, input_labels=labels)
        with blhf.sam3_keep_ratio_context(track, 0.25):
            e = track(pixel_values=pixels, input_points=points, input_labels=labels)
    assert close(c.pred_masks, d.pred_masks) and close(c.iou_scores, d.iou_scores)
    assert (c.pred_masks - e.pred_masks).abs().max() > 1e-3


@pytest.mark.parametrize("index", [1, 2], ids=["global", "windowed"])
def test_router_chooses_the_tokens_and_weights_are_one(index: int):
    """A windowed layer updates its router's top k = ceil(r w^2) of each window, a global layer
    its top ceil(r N) of the image; the others keep the stream (after the E-block)."""
    layer = trained(backbone()).layers[index]
    x = torch.randn(2, 8, 8, 32)
    with torch.no_grad():
        after = x + layer.little(x)
        out = layer(x, keep_ratio=0.5)
        logits = layer.router(layer.layer_norm1(after))  # (B, H, W)
    changed = (out - after).abs().amax(-1) > 0  # (B, H, W)
    if index == 1:  # global: the image's best half, k = ceil(0.5 * 64) = 32
        expected = logits.flatten(1) >= logits.flatten(1).topk(32, dim=1).values[:, -1:]
    else:  # windowed: the best half of each 4 x 4 window, k = ceil(0.5 * 16) = 8
        groups = logits.view(2, 2, 4, 2, 4).permute(0, 1, 3, 2, 4).reshape(2, 4, 16)
        top = groups >= groups.topk(8, dim=-1).values[..., -1:]
        expected = top.view(2, 2, 2, 4, 4).permute(0, 1, 3, 2, 4).reshape(2, 64)
    assert torch.equal(changed.flatten(1), expected)
    layer.train()  # the router weight p / p.detach() is 1 in value
    assert close(layer(x, keep_ratio=0.5), out)


def test_every_new_parameter_learns(pixels):
    model = trained(backbone()).train()
    out = model(pixels, keep_ratio=0.5).last_hidden_state
    out.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_save_and_autoload_round_trip_is_exact(detector, pixels, tmp_path):
    swapped = trained(little(detector, keep_ratio=0.5, little_window_size=3))
    swapped.save_pretrained(tmp_path)
    loaded = blhf.load_sam3(tmp_path).eval()
    bb = loaded.vision_encoder.backbone
    assert isinstance(bb, blhf.BigLittleSam3ViTModel) and bb.keep_ratio == 0.5
    assert bb.config.biglittle["little_window_size"] == 3 and bb.layers[1].router is not None
    for name, buffer in loaded.named_buffers():
        assert torch.isfinite(buffer).all(), name
    a, b = detect(swapped, pixels), detect(loaded, pixels)
    assert torch.equal(a["masks"], b["masks"]) and torch.equal(a["fpn"][0], b["fpn"][0])
    assert not close(a["fpn"][2], detect(detector, pixels)["fpn"][2], 1e-2)  # E-blocks matter
    swapped.vision_encoder.backbone.save_pretrained(tmp_path / "backbone")
    alone = AutoModel.from_pretrained(tmp_path / "backbone").eval()
    with torch.no_grad():
        expected = swapped.vision_encoder.backbone(pixels).last_hidden_state
        assert torch.equal(alone(pixels).last_hidden_state, expected)
    # A saved student must hold its E-blocks: loading is strict about them too.
    weights = load_file(tmp_path / "model.safetensors")
    del weights["vision_encoder.backbone.layers.2.little.up.weight"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"missing keys \(1\).*layers\.2\.little\.up"):
        blhf.load_sam3(tmp_path)


def test_official_checkpoint_swaps_with_only_the_new_keys_missing(detector, pixels, tmp_path):
    detector.save_pretrained(tmp_path)  # a stock SAM 3 folder, as the Hub's
    swapped = little(tmp_path).eval()
    a, b = detect(detector, pixels), detect(swapped, pixels)
    assert close(a["masks"], b["masks"]) and close(a["fpn"][0], b["fpn"][0])
    bb = swapped.vision_encoder.backbone
    assert bb.config.teacher_checkpoint == str(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["vision_encoder.backbone.layers.1.mlp.fc1.weight"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"missing keys \(1\).*layers\.1\.mlp\.fc1"):
        little(tmp_path)


def test_reswap_keeps_or_refuses_to_drop_the_e_blocks():
    model = trained(backbone())
    again = blhf.to_biglittle_sam3(model, keep_ratio=0.25, training_free=False)
    assert again.keep_ratio == 0.25
    assert torch.equal(again.layers[2].little.up.weight, model.layers[2].little.up.weight)
    with pytest.raises(ValueError, match="would drop them: pass training_free=False"):
        blhf.to_biglittle_sam3(model)
    with pytest.raises(ValueError, match="E-blocks do not fit the new LITTLE settings"):
        blhf.to_biglittle_sam3(model, training_free=False, little_dim=16)


def test_macs_match_flop_counter(pixels: torch.Tensor):
    """E-block windows of 3 on the 8 x 8 grid: padded windows, as SAM 1's E-blocks pad."""
    model = trained(backbone(little_window_size=3, dense_layers=[]))
    for layer in model.layers:
        layer.little.attn.fused = False  # the explicit path: the counter sees its products
    with torch.no_grad():
        for ratio in (1.0, 0.25):
            with FlopCounterMode(display=False) as counter:
                model(pixels, keep_ratio=ratio)
            macs = encoder_macs(model, ratio)
            # The router is a matrix product here; LayerNorms are counted apart.
            assert counter.get_total_flops() == 2 * len(pixels) * (macs["total"] - macs["norm"])
            assert macs["little"] > 0 and macs["match"] == 0
    assert encoder_gmacs(model, 0.1) < encoder_gmacs(model, 0.5) < encoder_gmacs(model, 1.0)


def test_real_size_macs():
    """SAM 3's own backbone with E-blocks of 256 (the default, hidden_size / 4)."""
    stock = encoder_gmacs(Sam3ViTConfig())
    config = blhf.BigLittleSam3ViTConfig(biglittle={"training_free": False})
    assert config.biglittle["little_dim"] == 256 and config.biglittle["little_heads"] == 4
    assert config.biglittle["little_window_size"] == 24
    e_blocks = encoder_macs(config, 1.0)["little"] / 1e9
    assert 240 < e_blocks < 280  # 31 routed layers of ~8.4 GMACs
    assert 0 < encoder_gmacs(config, 1.0) - stock - e_blocks < 2.0  # and the E-blocks' norms
    assert encoder_gmacs(config, 0.5) < 0.7 * stock


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(little_dim=0), r"biglittle.little_dim must be a whole number >= 1, got 0"),
        (dict(little_dim=8, little_heads=3), r"little_dim \(8\) must be divisible by little_heads"),
        (dict(little_mlp_ratio=-1), r"little_mlp_ratio must be a number > 0"),
        (dict(little_window_size=True), r"little_window_size must be a whole number >= 1"),
        (dict(little_heads=1.5), r"little_heads must be a whole number >= 1"),
    ],
)
def test_bad_little_settings_raise_clear_errors(change: Dict[str, Any], message: str):
    with pytest.raises(ValueError, match=message):
        blhf.BigLittleSam3ViTConfig(**BACKBONE, biglittle={"training_free": False, **change})
