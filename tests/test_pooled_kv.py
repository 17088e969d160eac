"""Pooled keys/values in semi-cross attention (``pool_kv``): exactness where it must be exact."""

from __future__ import annotations

import dataclasses
from typing import Tuple

import pytest
import torch

from biglittle_sam import BIGLITTLE_CONFIGS, ImageEncoderBigLittle, sam_model_registry
from biglittle_sam.config import BigLittleConfig
from biglittle_sam.flops import encoder_gmacs, encoder_macs
from biglittle_sam.modeling import BigLittleBlock

from .conftest import randomize_

TINY = BIGLITTLE_CONFIGS["bl_tiny"]


def _encoder(keep_ratio: float, pool_kv: bool) -> ImageEncoderBigLittle:
    cfg = dataclasses.replace(TINY, keep_ratio=keep_ratio, pool_kv=pool_kv)
    enc = randomize_(ImageEncoderBigLittle(cfg), std=0.1).eval()
    for b in enc.blocks:
        torch.nn.init.constant_(b.little.gamma, 0.3)
    return enc


def test_keep_ratio_one_is_unchanged(tiny_sam_checkpoint) -> None:
    sam = sam_model_registry["vit_tiny"](checkpoint=tiny_sam_checkpoint)
    bl = sam_model_registry["bl_tiny"](
        sam_checkpoint=tiny_sam_checkpoint, keep_ratio=1.0, pool_kv=True
    )
    assert bl.image_encoder.pool_kv
    x = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        diff = (sam.image_encoder(x) - bl.image_encoder(x)).abs().max().item()
    assert diff < 1e-4


@pytest.mark.parametrize("keep_ratio", [0.5, 0.25, 0.1])
def test_fused_equals_reference(keep_ratio: float) -> None:
    enc = _encoder(keep_ratio, pool_kv=True)
    x = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        fused = enc(x)
        enc.fused_attn = False
        reference = enc(x)
        enc.pool_kv = False
        full = enc(x)
    assert (fused - reference).abs().max().item() < 1e-4
    assert (fused - full).abs().max().item() > 1e-4  # pooling does change the keys


def _block_input(window_size: int) -> Tuple[BigLittleBlock, torch.Tensor]:
    """A block without relative positions and tokens equal within every 2 x 2 block."""
    torch.manual_seed(0)
    blk = BigLittleBlock(
        32, 2, little_dim=8, little_heads=2, use_rel_pos=False, window_size=window_size,
        little_window_size=6, input_size=(16, 16),
    )  # fmt: skip
    randomize_(blk, std=0.2)
    coarse = torch.randn(2, 8, 8, 32)  # (B, H/2, W/2, C)
    x = coarse.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)  # (B, H, W, C)
    return blk.eval(), x


@pytest.mark.parametrize("window_size", [0, 6])
@pytest.mark.parametrize("keep_ratio", [0.5, 0.2])
def test_exact_when_blocks_are_uniform(window_size: int, keep_ratio: float) -> None:
    """Where the four tokens of each 2 x 2 block are equal, their mean is each of them, and the
    log(count) logit gives the block the weight of its unrouted tokens: pooling is then exact.
    Window 6 on a 16 x 16 grid pads to 18 x 18, so padded blocks are covered too."""
    blk, x = _block_input(window_size)
    with torch.no_grad():
        blk.little.gamma.zero_()  # keep the E-block from breaking the 2 x 2 uniformity
        full, routing = blk(x, keep_ratio, return_routing=True)
        pooled, routing_pooled = blk(x, keep_ratio, return_routing=True, pool_kv=True)
    assert torch.equal(routing[1], routing_pooled[1])
    assert routing[1].any() and not routing[1].all()
    assert (full - pooled).abs().max().item() < 1e-5


def test_gradients_reach_routers_and_little_blocks() -> None:
    enc = _encoder(0.25, pool_kv=True).train()
    y = enc(torch.randn(2, 3, 256, 256))
    (y**2).mean().backward()
    for b in enc.blocks:
        assert b.router.score.weight.grad is not None and b.router.score.weight.grad.abs().sum()
        assert b.little.gamma.grad is not None and b.little.gamma.grad.abs().sum()


def test_flops_count_pooling_and_match_fvcore() -> None:
    fvcore_nn = pytest.importorskip("fvcore.nn")
    enc = _encoder(0.25, pool_kv=True)
    enc.fused_attn = False  # fvcore cannot see inside SDPA
    with torch.no_grad():
        analysis = fvcore_nn.FlopCountAnalysis(enc, torch.zeros(1, 3, 256, 256))
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        theirs = float(analysis.total())
    ours = encoder_macs(enc)["total"]
    assert abs(ours - theirs) / theirs < 0.03
    for r in (0.5, 0.25, 0.1):
        assert encoder_gmacs("bl_b", r, pool_kv=True) < encoder_gmacs("bl_b", r, pool_kv=False)
    assert encoder_gmacs("bl_b", 1.0, pool_kv=True) == encoder_gmacs("bl_b", 1.0, pool_kv=False)
    assert (
        encoder_gmacs("bl_b", 0.1, pool_kv=True) < 110
    )  # the cost model (docs/encoder.md): pooled k/v at r = 0.1


def test_needs_even_grid_and_window() -> None:
    with pytest.raises(ValueError, match="even"):
        dataclasses.replace(TINY, window_size=5, pool_kv=True)
    assert isinstance(dataclasses.replace(TINY, pool_kv=True), BigLittleConfig)
    enc = ImageEncoderBigLittle(dataclasses.replace(TINY, window_size=5))
    with pytest.raises(ValueError, match="even"):
        enc.pool_kv = True
