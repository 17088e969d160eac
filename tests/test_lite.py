"""bl_b_lite: the lighter big.LITTLE config (E-blocks at d = 96, MLP ratio 2, pooled keys/values).

A full-size vit_b state dict is too large for a unit test, so bl_b_lite's inheritance is checked on
the meta device (every SAM ViT-B weight has a same-shaped home) and the behaviour on the tiny
analogue: bl_tiny with the same cuts (E-blocks at an eighth of the width, MLP ratio 2, pooled
keys/values) against vit_tiny.
"""

from __future__ import annotations

import torch
from segment_anything import sam_model_registry as upstream_registry

from biglittle_sam import sam_model_registry
from biglittle_sam.build_sam import NEW_IN_BIGLITTLE
from biglittle_sam.checkpoint import guess_model_name
from biglittle_sam.config import BIGLITTLE_CONFIGS, get_config
from biglittle_sam.flops import encoder_gmacs, mac_split

from .conftest import randomize_

LITE = BIGLITTLE_CONFIGS["bl_b_lite"]
# bl_tiny (C = 64) cut as bl_b_lite cuts bl_b (C = 768): d = C / 8, MLP ratio 2, pooled k/v.
TINY_LITE = dict(little_dim=8, little_heads=2, little_mlp_ratio=2.0, pool_kv=True)


def test_config_is_bl_b_with_lighter_e_blocks() -> None:
    bl_b = get_config("bl_b")
    assert (LITE.little_dim, LITE.little_heads, LITE.little_mlp_ratio) == (96, 2, 2.0)
    assert LITE.pool_kv and LITE.teacher == "vit_b"
    same = ("embed_dim", "depth", "num_heads", "mlp_ratio", "window_size", "global_attn_indexes")
    assert all(getattr(LITE, f) == getattr(bl_b, f) for f in same)


def test_builds_at_full_size_and_every_sam_vit_b_weight_has_a_home() -> None:
    with torch.device("meta"):
        lite = sam_model_registry["bl_b_lite"](keep_ratio=0.1)
        sam = upstream_registry["vit_b"](checkpoint=None)
        y = lite.image_encoder(torch.empty(1, 3, 1024, 1024))
    assert y.shape == (1, 256, 64, 64)
    ours = {k: tuple(v.shape) for k, v in lite.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in sam.state_dict().items()}
    new = {k for k in ours if any(tag in k for tag in NEW_IN_BIGLITTLE)}
    assert set(ours) - new == set(theirs)
    assert all(ours[k] == theirs[k] for k in theirs)
    little = lite.image_encoder.blocks[0].little
    assert any(p.shape[0] == 96 * 2 for p in little.parameters())  # MLP hidden 2 * d
    # A bare state dict is recognised by its E-block shapes: bl_b_lite is not mistaken for bl_b.
    assert guess_model_name(lite.state_dict()) == "bl_b_lite"
    with torch.device("meta"):
        bl_b = sam_model_registry["bl_b"]()
    assert guess_model_name(bl_b.state_dict()) == "bl_b"
    assert guess_model_name(bl_b.image_encoder.state_dict()) == "bl_b"


def test_tiny_lite_inherits_from_an_official_layout_checkpoint(tiny_sam_checkpoint) -> None:
    sam = sam_model_registry["vit_tiny"](checkpoint=tiny_sam_checkpoint)
    lite = sam_model_registry["bl_tiny"](
        sam_checkpoint=tiny_sam_checkpoint, training_free=False, **TINY_LITE
    )
    got = lite.state_dict()
    for key, value in sam.state_dict().items():
        assert torch.equal(got[key], value), key


def test_tiny_lite_equals_sam_at_keep_ratio_one_with_gamma_zero(tiny_sam_checkpoint) -> None:
    sam = sam_model_registry["vit_tiny"](checkpoint=tiny_sam_checkpoint)
    lite = sam_model_registry["bl_tiny"](
        sam_checkpoint=tiny_sam_checkpoint, keep_ratio=1.0, training_free=False, **TINY_LITE
    )
    assert all(float(b.little.gamma.detach().abs().max()) == 0.0 for b in lite.image_encoder.blocks)
    x = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        diff = (sam.image_encoder(x) - lite.image_encoder(x)).abs().max().item()
    assert diff < 1e-4


def test_tiny_lite_runs_routed(tiny_sam_checkpoint) -> None:
    lite = sam_model_registry["bl_tiny"](
        sam_checkpoint=tiny_sam_checkpoint, keep_ratio=0.25, **TINY_LITE
    )
    randomize_(lite.image_encoder, std=0.1)
    with torch.no_grad():
        y = lite.image_encoder(torch.randn(1, 3, 256, 256))
    assert y.shape == (1, 32, 16, 16) and torch.isfinite(y).all()


def test_lite_costs_fewer_macs_than_bl_b_at_every_ratio() -> None:
    for r in (1.0, 0.5, 0.25, 0.1):
        assert encoder_gmacs("bl_b_lite", r) < encoder_gmacs("bl_b", r, pool_kv=True)
    lite, bl_b = mac_split("bl_b_lite", 0.1), mac_split("bl_b", 0.1, pool_kv=True)
    # Only the E-blocks change: d 192 -> 96 and MLP ratio 4 -> 2.
    assert lite["little"] < bl_b["little"] / 2.5
    assert {k: v for k, v in lite.items() if k not in ("little", "total")} == {
        k: v for k, v in bl_b.items() if k not in ("little", "total")
    }
