"""SAM 3's big.LITTLE backbone in transformers (biglittle_sam.hf.sam3_*).

Every model is built here with a size the project never registered (nothing is downloaded): a
ViT 32 wide, 3 layers of 2 heads, MLP 48, patch 14 on 112-pixel images (an 8 x 8 grid), windows of
4 (2 x 2 windows), layer 1 global; the DETR / geometry / mask parts and CLIP's text encoder one
layer each. Weights are drawn wider than transformers' init so the backbone's routing changes what
the heads read. At keep ratio 1 the swapped ``Sam3Model`` / ``Sam3TrackerModel`` must give the
stock outputs; below 1 the model must survive ``save_pretrained`` / ``AutoModel.from_pretrained``
exactly, and its MACs must match ``torch.utils.flop_counter``.
"""

from __future__ import annotations

import json
from typing import Any, Dict

import pytest
import torch

pytest.importorskip("transformers", minversion="5.0")

from safetensors.torch import load_file, save_file  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402
from transformers import (  # noqa: E402
    AutoModel,
    Sam3Config,
    Sam3Model,
    Sam3TrackerConfig,
    Sam3TrackerModel,
    Sam3ViTConfig,
    Sam3ViTModel,
)
from transformers.models.sam3.modeling_sam3 import Sam3ViTLayer, window_partition  # noqa: E402

import biglittle_sam.hf as blhf  # noqa: E402
from biglittle_sam.checkpoint import CheckpointError  # noqa: E402
from biglittle_sam.flops import encoder_gmacs, encoder_macs  # noqa: E402
from biglittle_sam.hf.sam3_layer import rope_semi_cross_attention  # noqa: E402

SIZE = 112
BACKBONE: Dict[str, Any] = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=3)
BACKBONE.update(num_attention_heads=2, image_size=SIZE, patch_size=14, window_size=4)
BACKBONE.update(global_attn_indexes=[1], pretrain_image_size=56)
VISION = dict(fpn_hidden_size=32, backbone_feature_sizes=[[32, 32], [16, 16], [8, 8]])
SMALL = dict(hidden_size=32, num_layers=1, num_attention_heads=2, intermediate_size=64)
TEXT: Dict[str, Any] = dict(model_type="clip_text_model", vocab_size=64, hidden_size=32)
TEXT.update(intermediate_size=64, projection_dim=32, num_hidden_layers=1, num_attention_heads=2)
TEXT.update(max_position_embeddings=8, bos_token_id=0, eos_token_id=1, pad_token_id=1)


def vision_config(**backbone: Any) -> Dict[str, Any]:
    bb = dict(model_type="sam3_vit_model", **{**BACKBONE, **backbone})
    return dict(backbone_config=bb, **VISION)


def _widen(model: torch.nn.Module) -> torch.nn.Module:
    """Redraw every weight wider than transformers' init (std 0.02), so that the backbone's
    layers change their input a lot and the heads do not saturate."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 1.0 / p[0].numel() ** 0.5)
            elif "bias" in name:
                p.normal_(0.0, 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def detector() -> Sam3Model:
    config = Sam3Config(
        vision_config=vision_config(),
        text_config=TEXT,
        geometry_encoder_config=SMALL,
        detr_encoder_config=SMALL,
        detr_decoder_config=dict(SMALL, num_queries=4),
        mask_decoder_config=dict(hidden_size=32, num_attention_heads=2),
    )
    return _widen(Sam3Model(config))


@pytest.fixture(scope="module")
def tracker() -> Sam3TrackerModel:
    config = Sam3TrackerConfig(
        vision_config=dict(model_type="sam3_vision_model", **vision_config()),
        prompt_encoder_config=dict(hidden_size=32, image_size=SIZE, patch_size=14),
        mask_decoder_config=dict(
            hidden_size=32, num_attention_heads=2, mlp_dim=64, iou_head_hidden_dim=32
        ),
    )
    return _widen(Sam3TrackerModel(config))


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def detect(model: Sam3Model, pixels: torch.Tensor) -> Dict[str, Any]:
    ids = torch.tensor([[0, 5, 9, 1]]).expand(pixels.shape[0], 4)
    with torch.no_grad():
        vision = model.get_vision_features(pixel_values=pixels)
        out = model(pixel_values=pixels, input_ids=ids)
    return {"fpn": vision.fpn_hidden_states, "masks": out.pred_masks, "logits": out.pred_logits}


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> bool:
    return a.shape == b.shape and (a - b).abs().max().item() <= tol


def test_swapped_detector_at_ratio_one_equals_stock(detector: Sam3Model, pixels: torch.Tensor):
    swapped = blhf.to_biglittle_sam3(detector, keep_ratio=1.0)
    assert type(swapped) is Sam3Model
    assert isinstance(swapped.vision_encoder.backbone, blhf.BigLittleSam3ViTModel)
    assert isinstance(detector.vision_encoder.backbone, Sam3ViTModel)  # the input is unchanged
    assert not isinstance(detector.vision_encoder.backbone, blhf.BigLittleSam3ViTModel)
    ours = dict(swapped.named_parameters())
    for name, p in detector.named_parameters():  # the same names, equal, not shared
        assert torch.equal(ours[name], p) and ours[name].data_ptr() != p.data_ptr()
    stock, bl = detect(detector, pixels), detect(swapped, pixels)
    assert len(bl["fpn"]) == 4
    for a, b in zip(stock["fpn"], bl["fpn"]):
        assert close(a, b)
    assert close(stock["masks"], bl["masks"]) and close(stock["logits"], bl["logits"])
    # Below 1 the routing changes the backbone, so the FPN features differ.
    blhf.set_sam3_keep_ratio(swapped, 0.25)
    routed = detect(swapped, pixels)
    assert (routed["fpn"][2] - stock["fpn"][2]).abs().max() > 1e-2
    assert swapped.config.vision_config.backbone_config.biglittle["keep_ratio"] == 0.25


def test_swapped_tracker_point_prompt_at_ratio_one(tracker: Sam3TrackerModel, pixels: torch.Tensor):
    swapped = blhf.to_biglittle_sam3(tracker, keep_ratio=1.0)
    assert type(swapped) is Sam3TrackerModel
    points = torch.tensor([[[[40.0, 70.0]]], [[[90.0, 20.0]]]])
    labels = torch.ones(2, 1, 1, dtype=torch.long)
    with torch.no_grad():
        a = tracker(pixel_values=pixels, input_points=points, input_labels=labels)
        b = swapped(pixel_values=pixels, input_points=points, input_labels=labels)
        with blhf.sam3_keep_ratio_context(swapped, 0.25):
            c = swapped(pixel_values=pixels, input_points=points, input_labels=labels)
    assert close(a.pred_masks, b.pred_masks) and close(a.iou_scores, b.iou_scores)
    assert (a.pred_masks - c.pred_masks).abs().max() > 1e-3  # the context routed that call
    assert swapped.vision_encoder.backbone.keep_ratio == 1.0  # and left the model's ratio


@pytest.mark.parametrize("index", [0, 1], ids=["windowed", "global"])
def test_rope_semi_cross_attention_equals_stock_per_layer(index: int):
    torch.manual_seed(index)
    stock = _widen(Sam3ViTModel(Sam3ViTConfig(**BACKBONE)))
    layer = blhf.to_biglittle_sam3(stock, keep_ratio=1.0).layers[index]
    x = torch.randn(2, 8, 8, 32)
    with torch.no_grad():
        reference = Sam3ViTLayer.forward(layer, x)  # SAM 3's own layer, every token dense
        routed = layer.routed_forward(x, 1.0)  # every token chosen, in score order
        assert close(routed, reference)
        # A few queries, in a scrambled order, each with its own position's rotation: the rows
        # of the stock attention at those positions.
        xn = layer.layer_norm1(x)
        groups = window_partition(xn, 4)[0].flatten(1, 2) if layer.window_size else xn.flatten(1, 2)
        cos, sin = layer.rotary_emb(groups, layer.position_ids)
        full = rope_semi_cross_attention(
            layer.attention,
            groups,
            groups,
            torch.arange(groups.shape[1]).expand(len(groups), -1),
            cos,
            sin,
        )
        pick = torch.stack([torch.randperm(groups.shape[1])[:5] for _ in range(len(groups))])
        q_in = groups.gather(1, pick.unsqueeze(-1).expand(-1, -1, 32))
        part = rope_semi_cross_attention(layer.attention, q_in, groups, pick, cos, sin)
    assert close(part, full.gather(1, pick.unsqueeze(-1).expand(-1, -1, 32)))


def test_save_and_autoload_round_trip_is_exact(detector, pixels, tmp_path):
    swapped = blhf.to_biglittle_sam3(detector, keep_ratio=0.5, token_score="window_mean")
    swapped.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())["vision_config"]["backbone_config"]
    assert saved["model_type"] == "biglittle_sam3_vit"
    assert saved["biglittle"]["keep_ratio"] == 0.5
    assert saved["biglittle"]["token_score"] == "window_mean"
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    backbone = loaded.vision_encoder.backbone
    assert type(loaded) is Sam3Model and isinstance(backbone, blhf.BigLittleSam3ViTModel)
    assert backbone.keep_ratio == 0.5
    for name, buffer in loaded.named_buffers():  # built on the meta device: all initialised
        assert torch.isfinite(buffer).all(), name
    for i, layer in enumerate(backbone.layers):
        expected = layer.precompute_positions(layer.config, layer.window_size)
        assert torch.equal(layer.position_ids, expected), i
    a, b = detect(swapped, pixels), detect(loaded, pixels)
    assert torch.equal(a["masks"], b["masks"]) and torch.equal(a["fpn"][0], b["fpn"][0])
    # The backbone alone round-trips through AutoModel too.
    swapped.vision_encoder.backbone.save_pretrained(tmp_path / "backbone")
    alone = AutoModel.from_pretrained(tmp_path / "backbone").eval()
    assert isinstance(alone, blhf.BigLittleSam3ViTModel) and alone.keep_ratio == 0.5


def test_checkpoint_with_missing_weights_is_refused(detector, tmp_path):
    blhf.to_biglittle_sam3(detector).save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    dropped = "vision_encoder.backbone.layers.2.attention.q_proj.weight"
    del weights[dropped]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"missing keys \(1\).*layers\.2\.attention\.q_proj"):
        blhf.load_sam3(tmp_path)
    with pytest.raises(CheckpointError, match="q_proj"):
        blhf.to_biglittle_sam3(tmp_path)


@pytest.mark.parametrize("rule", ["copy", "identity", "mlp_skip"])
def test_training_free_below_one_runs_and_macs_match_flop_counter(rule: str, pixels: torch.Tensor):
    stock = Sam3ViTModel._from_config(Sam3ViTConfig(**BACKBONE), attn_implementation="eager")
    stock = _widen(stock)  # eager attention: the flop counter sees its matmuls
    model = blhf.to_biglittle_sam3(stock, keep_ratio=0.5, skip_rule=rule, token_score="edge")
    with torch.no_grad():
        dense = model(pixels, keep_ratio=1.0).last_hidden_state
        for ratio in (0.5, 0.25):
            with FlopCounterMode(display=False) as counter:
                out = model(pixels, keep_ratio=ratio).last_hidden_state
            macs = encoder_macs(model, ratio)
            # The counter sees matrix products and the patch convolution (no norms, no scores),
            # for the whole batch; 2 FLOPs a MAC.
            assert counter.get_total_flops() == 2 * len(pixels) * (
                macs["total"] - macs["norm"] - macs["router"]
            )
            assert out.shape == dense.shape and torch.isfinite(out).all()
            assert (out - dense).abs().max() > 1e-3
    assert encoder_gmacs(model, 0.25) < encoder_gmacs(model, 0.5) < encoder_gmacs(stock)
    assert encoder_gmacs(model, 1.0) == encoder_gmacs(stock)


def test_real_size_macs_fall_with_the_keep_ratio():
    """SAM 3's own backbone (1008 px, 32 layers, 1024 wide): counted from the config alone."""
    stock = encoder_gmacs(Sam3ViTConfig())
    routed = blhf.BigLittleSam3ViTConfig(biglittle={"keep_ratio": 0.5})
    assert 2600 < stock < 2800  # 28 windowed layers of ~78 GMACs on 5184 tokens, 4 global of ~127
    assert encoder_gmacs(routed, 1.0) == stock
    assert 0.5 * stock < encoder_gmacs(routed, 0.5) < 0.7 * stock


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(window_size=3), r"8 x 8 token grid .* does not tile into windows of 3"),
        (dict(global_attn_indexes=[1, 3]), r"global_attn_indexes \[3\] are outside .*0\.\.2"),
        (dict(image_size=100), r"image_size \(100\) must be a multiple of patch_size \(14\)"),
        (dict(biglittle={"keep_ratio": 0}), r"biglittle.keep_ratio must be in \(0, 1\]"),
        (dict(biglittle={"token_score": "norm"}), r"biglittle.token_score must be one of"),
        (dict(biglittle={"dense_layers": [5]}), r"dense_layers \[5\] are not layers"),
        (dict(biglittle={"ratio": 0.5}), r"unknown settings \['ratio'\]"),
        (dict(biglittle={"training_free": "no"}), r"biglittle.training_free must be true or"),
    ],
)
def test_bad_configs_raise_clear_errors(change: Dict[str, Any], message: str):
    with pytest.raises(ValueError, match=message):
        blhf.BigLittleSam3ViTConfig(**{**BACKBONE, **change})


def test_bad_inputs_raise_clear_errors(detector: Sam3Model):
    with pytest.raises(ValueError, match="does not tile into windows of 3"):
        blhf.to_biglittle_sam3(Sam3ViTModel(Sam3ViTConfig(**{**BACKBONE, "window_size": 3})))
    with pytest.raises(TypeError, match="expected a transformers SAM 3 model"):
        blhf.to_biglittle_sam3(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="keep_ratio must be in"):
        blhf.to_biglittle_sam3(detector, keep_ratio=1.5)
    model = blhf.to_biglittle_sam3(detector.vision_encoder.backbone, keep_ratio=0.5)
    with pytest.raises(ValueError, match="the token grid its config was built for"):
        model(torch.randn(1, 3, 2 * SIZE, 2 * SIZE))
