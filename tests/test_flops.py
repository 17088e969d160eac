"""The analytic MAC counter against fvcore, and against the cost model in docs/encoder.md."""

from __future__ import annotations

import logging

import pytest
import torch

from biglittle_sam import sam_model_registry
from biglittle_sam.flops import (
    SPLIT_PARTS,
    encoder_gmacs,
    encoder_macs,
    format_split_table,
    format_table,
    mac_split,
)

fvcore_nn = pytest.importorskip("fvcore.nn")

# bl_b_lite's cuts (E-blocks at C / 8, MLP ratio 2, pooled keys/values) on bl_tiny.
LITE_TINY = {"little_dim": 8, "little_heads": 2, "little_mlp_ratio": 2.0, "pool_kv": True}


def _fvcore(encoder: torch.nn.Module, size: int) -> float:
    logging.getLogger("fvcore").setLevel(logging.ERROR)
    with torch.no_grad():
        analysis = fvcore_nn.FlopCountAnalysis(encoder, torch.zeros(1, 3, size, size))
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        return float(analysis.total())


@pytest.mark.parametrize(
    "name, keep_ratio, extra",
    [
        ("vit_tiny", None, {}),
        ("bl_tiny", 1.0, {}),
        ("bl_tiny", 0.5, {}),
        ("bl_tiny", 0.1, {}),
        ("bl_tiny", 0.5, {"little_window_size": 16}),  # global E-blocks on the 16 x 16 grid
        ("bl_tiny", 0.1, LITE_TINY),  # bl_b_lite's cuts on the tiny model
        ("bl_tiny", 0.5, LITE_TINY),
        ("bl_tiny", 1.0, LITE_TINY),
    ],
)
def test_matches_fvcore_within_3_percent(name: str, keep_ratio, extra) -> None:
    kwargs = {} if keep_ratio is None else {"keep_ratio": keep_ratio, "fused_attn": False}
    encoder = sam_model_registry[name](**kwargs, **extra).image_encoder  # fvcore: no fused SDPA
    ours = encoder_macs(encoder)["total"]
    theirs = _fvcore(encoder, 256)
    assert abs(ours - theirs) / theirs < 0.03


def test_full_size_numbers_follow_the_cost_model() -> None:
    sam = encoder_gmacs("vit_b")
    assert 480 < sam < 490  # SAM ViT-B: ~486 GMACs with patch embedding and neck
    ratios = {r: encoder_gmacs("bl_b", r) for r in (1.0, 0.5, 0.25, 0.1)}
    assert ratios[1.0] > sam  # E-blocks cost extra when every token is big
    assert ratios[1.0] > ratios[0.5] > ratios[0.25] > ratios[0.1]
    # the cost model: ~301 / ~200 / ~139 with a rN capacity; windows pad 64 -> 70, so a little more
    assert 290 < ratios[0.5] < 345 and 195 < ratios[0.25] < 230 and 135 < ratios[0.1] < 160
    assert "bl_b" in format_table(["vit_b", "bl_b"], [0.5])


def test_fused_sam_baseline_matches_fvcore() -> None:
    from biglittle_sam.modeling import ImageEncoderViTFused

    fast = ImageEncoderViTFused.from_sam(sam_model_registry["vit_tiny"]().image_encoder)
    for blk in fast.blocks:
        blk.attn.fused = False  # fvcore cannot see inside SDPA
    ours = encoder_macs(fast)["total"]
    assert abs(ours - _fvcore(fast, 256)) / ours < 0.03


def test_bl_b_lite_matches_fvcore_at_a_reduced_image_size() -> None:
    """bl_b_lite's own config (d = 96, MLP ratio 2, pooled) counted at a reduced image size, where
    fvcore can trace it in a unit test: the same code paths as at 1024. Its 28 x 28 grid pools
    the global context to 7 x 7 blocks (the default 8 must divide the grid)."""
    encoder = sam_model_registry["bl_b_lite"](
        keep_ratio=0.1, fused_attn=False, img_size=448, global_context_pool=7
    ).image_encoder
    ours = encoder_macs(encoder)["total"]
    assert abs(ours - _fvcore(encoder, 448)) / ours < 0.03


@pytest.mark.parametrize("name, pool_kv", [("vit_b", None), ("bl_b", True), ("bl_b_lite", None)])
def test_mac_split_sums_to_the_total(name: str, pool_kv) -> None:
    for r in (1.0, 0.5, 0.1):
        split = mac_split(name, r, pool_kv)
        assert split["total"] == encoder_macs(name, r, pool_kv)["total"]
        assert sum(split[k] for k, _ in SPLIT_PARTS) == split["total"]


def test_mac_split_parts_follow_the_design() -> None:
    sam = mac_split("vit_b")
    assert sam["little"] == sam["kv_unrouted"] == sam["router"] == 0
    pooled, full = mac_split("bl_b", 0.1, True), mac_split("bl_b", 0.1, False)
    C, N = 768, 64 * 64
    assert pooled["kv_unrouted"] == 12 * 2 * (N // 4) * C * C  # 12 blocks, the 2 x 2 pooled grid
    assert full["kv_unrouted"] > 3 * pooled["kv_unrouted"]  # unpooled: ~90% of N tokens
    assert pooled["little"] / pooled["total"] > 0.3  # E-blocks at d = 192: over a third at r = 0.1
    table = format_split_table(["vit_b", "bl_b", "bl_b_lite"], [0.1])
    assert "| bl_b_lite | 0.1 pooled |" in table and "k/v of unrouted tokens" in table


def test_profile_tool_prints_the_mac_split(capsys) -> None:
    from tools import profile_encoder

    report = profile_encoder.main(["--macs", "--macs-models", "vit_b", "bl_b_lite"])
    out = capsys.readouterr().out
    assert "| bl_b_lite | 0.1 pooled |" in out and "| vit_b | - |" in out
    assert report["macs"]["bl_b_lite"]["0.1"] == mac_split("bl_b_lite", 0.1, True)
    with pytest.raises(SystemExit) as info:
        profile_encoder.main(["--macs", "--macs-models", "nope"])
    assert info.value.code == 2
