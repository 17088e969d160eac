"""The encoder contract, exactness against SAM, routing and gradients."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from segment_anything.modeling.image_encoder import get_rel_pos

from biglittle_sam import BIGLITTLE_CONFIGS, ImageEncoderBigLittle, sam_model_registry
from biglittle_sam.config import capacity, window_capacities
from biglittle_sam.modeling import resize_rel_pos, select_tokens, window_partition

from .conftest import randomize_

TINY = BIGLITTLE_CONFIGS["bl_tiny"]


def _tiny_encoder(keep_ratio: float = 0.5, **overrides: object) -> ImageEncoderBigLittle:
    torch.manual_seed(0)
    cfg = dataclasses.replace(TINY, keep_ratio=keep_ratio, **overrides)
    return randomize_(ImageEncoderBigLittle(cfg), std=0.1).eval()


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("keep_ratio", [1.0, 0.5, 0.1])
def test_shape_contract(batch: int, keep_ratio: float) -> None:
    enc = _tiny_encoder(keep_ratio)
    x = torch.randn(batch, 3, TINY.img_size, TINY.img_size)
    with torch.no_grad():
        y = enc(x)
        y2, aux = enc.forward_with_aux(x)
    g = TINY.img_size // TINY.patch_size
    assert isinstance(y, torch.Tensor)
    assert y.shape == (batch, TINY.out_chans, g, g)
    assert (enc.img_size, enc.patch_size, enc.out_chans) == (256, 16, TINY.out_chans)
    torch.testing.assert_close(y, y2)
    assert len(aux.layers) == TINY.depth
    assert aux.usage().shape == (batch, g, g)


def test_full_size_contract_on_meta_device() -> None:
    cfg = BIGLITTLE_CONFIGS["bl_b"]
    with torch.device("meta"):
        enc = ImageEncoderBigLittle(dataclasses.replace(cfg, keep_ratio=0.25))
        y = enc(torch.empty(1, 3, 1024, 1024))
    assert y.shape == (1, 256, 64, 64)
    assert (enc.img_size, enc.patch_size, enc.out_chans) == (1024, 16, 256)


@pytest.mark.parametrize("fused", [True, False])
def test_exact_at_keep_ratio_one(tiny_sam_checkpoint, fused: bool) -> None:
    sam = sam_model_registry["vit_tiny"](checkpoint=tiny_sam_checkpoint)
    bl = sam_model_registry["bl_tiny"](
        sam_checkpoint=tiny_sam_checkpoint, keep_ratio=1.0, fused_attn=fused, training_free=False
    )
    assert all(float(b.little.gamma.detach().abs().max()) == 0.0 for b in bl.image_encoder.blocks)
    x = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        expected = sam.image_encoder(x)
        got = bl.image_encoder(x)
    assert (expected - got).abs().max().item() < 1e-4


@pytest.mark.slow
def test_exact_at_keep_ratio_one_vit_b(tmp_path) -> None:
    torch.manual_seed(0)
    sam = sam_model_registry["vit_b"]()
    randomize_(sam.image_encoder, std=0.02)
    path = tmp_path / "sam_vit_b.pth"
    torch.save(sam.state_dict(), path)
    bl = sam_model_registry["bl_b"](sam_checkpoint=path, keep_ratio=1.0, training_free=False)
    # official weights alone: the training-free mode, which at r = 1 is SAM too
    tf = sam_model_registry["bl_b"](sam_checkpoint=path, keep_ratio=1.0)
    assert tf.image_encoder.config.training_free
    x = torch.randn(1, 3, 1024, 1024)
    with torch.no_grad():
        expected = sam.image_encoder(x)
        diff = (expected - bl.image_encoder(x)).abs().max().item()
        diff_tf = (expected - tf.image_encoder(x)).abs().max().item()
    assert diff < 1e-4 and diff_tf < 1e-4


@pytest.mark.parametrize("keep_ratio", [0.05, 0.25, 0.5, 0.9, 1.0])
def test_capacity_and_padding(keep_ratio: float) -> None:
    enc = _tiny_encoder(keep_ratio)
    x = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        _, aux = enc.forward_with_aux(x)
    g = TINY.grid_size  # 16 x 16 grid, windows of 6: padded to 18 x 18, 9 windows
    w = TINY.window_size
    for layer in aux.layers:
        group = g * g if layer.kind == "global" else w * w
        assert layer.capacity == math.ceil(keep_ratio * group - 1e-9)
        if layer.kind == "global":
            expected = torch.full((2,), layer.capacity)
        else:
            # Per window: ceil(r * its real tokens), so edge windows route their share, not more.
            real, _ = window_partition(torch.ones(1, g, g, 1), w)  # (9, 36, 1), padding 0
            per_window = [math.ceil(keep_ratio * n - 1e-9) for n in real.sum(dim=(1, 2)).tolist()]
            assert tuple(per_window) == window_capacities(keep_ratio, (g, g), w)
            expected = torch.full((2,), sum(per_window))
            # Within each window the routed tokens are the best-scored real tokens.
            scores, _ = window_partition(layer.scores[..., None], w, float("-inf"))  # (18, 36, 1)
            chosen, _ = window_partition(layer.selected[..., None].float(), w)  # (18, 36, 1)
            for s_w, c_w in zip(scores[..., 0], chosen[..., 0].bool()):
                if c_w.any() and (~c_w).any():
                    assert s_w[c_w].min() >= s_w[~c_w].max()
        assert torch.equal(layer.selected.flatten(1).sum(1), expected)
        assert layer.indices.shape == (2, int(expected[0]))
        assert int(layer.indices.max()) < g * g  # indices address the real (unpadded) grid only
        assert layer.selected.shape == (2, g, g)


def test_selection_follows_router_scores() -> None:
    enc = _tiny_encoder(0.25)
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        _, aux = enc.forward_with_aux(x)
    layer = next(a for a in aux.layers if a.kind == "global")
    chosen = layer.scores.flatten()[layer.selected.flatten()]
    others = layer.scores.flatten()[~layer.selected.flatten()]
    assert chosen.min() >= others.max()


def test_keep_ratio_changes_output_and_validates() -> None:
    enc = _tiny_encoder(1.0)
    for b in enc.blocks:
        torch.nn.init.constant_(b.little.gamma, 0.5)
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        full = enc(x)
        enc.keep_ratio = 0.25
        quarter = enc(x)
    assert not torch.allclose(full, quarter)
    for bad in [0.0, -0.1, 1.5, float("nan"), "half"]:
        with pytest.raises(ValueError, match=r"\(0, 1\]"):
            enc.keep_ratio = bad  # type: ignore[assignment]
    with pytest.raises(ValueError, match="keep_ratio"):
        sam_model_registry["bl_tiny"](keep_ratio=2.0)


@pytest.mark.parametrize("keep_ratio", [1.0, 0.3])
def test_fused_equals_reference(keep_ratio: float) -> None:
    enc = _tiny_encoder(keep_ratio)
    for b in enc.blocks:
        torch.nn.init.constant_(b.little.gamma, 0.3)
    x = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        enc.fused_attn = True
        fused = enc(x)
        enc.fused_attn = False
        reference = enc(x)
    assert (fused - reference).abs().max().item() < 1e-4


def test_every_parameter_gets_a_gradient() -> None:
    enc = _tiny_encoder(0.3).train()
    for b in enc.blocks:
        torch.nn.init.constant_(b.little.gamma, 0.1)
    y = enc(torch.randn(2, 3, 256, 256))
    (y**2).mean().backward()
    missing = [n for n, p in enc.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert missing == []


def test_straight_through_weights() -> None:
    logits = torch.tensor([[3.0, -200.0, 1.0, float("-inf")], [0.0, 1.0, 2.0, 3.0]])
    logits.requires_grad_(True)
    idx, weights = select_tokens(logits, 3)
    assert weights is not None
    picked = logits.detach().gather(1, idx)
    # Exactly 1 for real tokens (even far below the max), 0 for a padded slot.
    assert torch.equal(weights.squeeze(-1), torch.isfinite(picked).float())
    weights.sum().backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0
    with torch.no_grad():
        idx2, none = select_tokens(logits, 3)
    assert none is None and torch.equal(idx2, idx)


def test_rel_pos_resize_matches_segment_anything() -> None:
    table = torch.randn(27, 8)
    for size in (14, 20):
        full = get_rel_pos(size, size, table)  # (size, size, 8), SAM's
        ours = resize_rel_pos(table, 2 * size - 1)
        q = torch.arange(size)
        idx = q[:, None] - q[None, :] + size - 1
        torch.testing.assert_close(ours[idx], full)


def test_capacity_rounding() -> None:
    assert capacity(0.3, 10) == 3
    assert capacity(0.5, 196) == 98
    assert capacity(0.01, 10) == 1
    assert capacity(1.0, 4096) == 4096


@pytest.mark.parametrize(
    "x, message",
    [
        (torch.randn(1, 3, 128, 128), "1 x 3 x 256 x 256|B x 3 x 256 x 256"),
        (torch.randn(3, 256, 256), "B x 3 x 256 x 256"),
        (torch.randn(1, 1, 256, 256), "B x 3 x 256 x 256"),
        (torch.zeros(1, 3, 256, 256, dtype=torch.uint8), "floating-point"),
    ],
)
def test_bad_input(x: torch.Tensor, message: str) -> None:
    enc = _tiny_encoder()
    with pytest.raises(ValueError, match=message):
        enc(x)
    with pytest.raises(TypeError, match="torch.Tensor"):
        enc([1, 2, 3])  # type: ignore[arg-type]


def test_bf16_autocast_stays_close() -> None:
    enc = _tiny_encoder(0.5)
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        ref = enc(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = enc(x)
    assert torch.isfinite(low).all()
    cos = torch.nn.functional.cosine_similarity(ref.flatten(), low.float().flatten(), dim=0)
    assert cos > 0.99


def test_random_routing_ablation() -> None:
    enc = _tiny_encoder(0.25)
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        _, learned = enc.forward_with_aux(x)
        enc.routing = "random"
        torch.manual_seed(1)
        _, random_a = enc.forward_with_aux(x)
        torch.manual_seed(1)
        _, random_b = enc.forward_with_aux(x)
    assert torch.equal(random_a.usage(), random_b.usage())  # seeded by torch's RNG
    assert not torch.equal(learned.usage(), random_a.usage())
    assert learned.layers[0].capacity == random_a.layers[0].capacity
    with pytest.raises(ValueError, match="routing"):
        enc.routing = "smart"
    with pytest.raises(ValueError, match="routing"):
        sam_model_registry["bl_tiny"](routing="smart")


@pytest.mark.parametrize("fused", [True, False])
def test_fused_sam_baseline_equals_sam(tiny_sam, fused: bool) -> None:
    from biglittle_sam.modeling import ImageEncoderViTFused

    fast = ImageEncoderViTFused.from_sam(tiny_sam.image_encoder)
    for blk in fast.blocks:
        blk.attn.fused = fused
    x = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        diff = (fast(x) - tiny_sam.image_encoder(x)).abs().max().item()
    assert diff < 1e-4
    with pytest.raises(ValueError, match="B x 3 x 256 x 256"):
        fast(torch.randn(1, 3, 64, 64))


def test_plan_cached_under_inference_mode_does_not_break_training() -> None:
    enc = _tiny_encoder(0.25)  # 16 x 16 grid in windows of 6: edge windows, so a slot plan
    x = torch.randn(2, 3, 256, 256)
    with torch.inference_mode():
        expected = enc(x)
    enc.train()
    y = enc(x)
    y.sum().backward()  # would fail if inference tensors had been cached and reused
    torch.testing.assert_close(y.detach(), expected)


def _preprocessed(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A random RGB image of height x width pixels, normalized and padded by ``Sam.preprocess``."""
    sam = sam_model_registry["bl_tiny"]()
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (1, 3, height, width), generator=gen).float()
    return sam.preprocess(pixels)  # (1, 3, 256, 256)


def test_padding_tokens_are_the_all_zero_patches_of_sam_preprocess() -> None:
    from biglittle_sam.modeling.image_encoder import padding_tokens

    x = _preprocessed(150, 256)  # 150 rows: 9 full patch rows, the 10th half image, 6 padding
    pad = padding_tokens(x, 16)  # (1, 16, 16)
    expected = torch.zeros(1, 16, 16, dtype=torch.bool)
    expected[:, 10:] = True  # a patch with any image pixel is not padding
    assert torch.equal(pad, expected)
    # A black image is not padding: normalized black is -mean / std, never 0.
    black = sam_model_registry["bl_tiny"]().preprocess(torch.zeros(1, 3, 256, 256))
    assert not padding_tokens(black, 16).any()


@pytest.mark.parametrize("routing", ["learned", "random", "update_norm"])
def test_padding_is_never_routed_while_the_image_has_tokens_left(routing: str) -> None:
    enc = _tiny_encoder(0.25)
    enc.routing = routing
    x = _preprocessed(128, 256)  # the bottom half of the grid is padding
    pad = torch.zeros(1, 16, 16, dtype=torch.bool)
    pad[:, 8:] = True
    with torch.no_grad():
        _, aux = enc.forward_with_aux(x)
    for layer in aux.layers:
        if layer.kind == "global":  # 64 routed of 128 image tokens: no padding among them
            assert not (layer.selected & pad).any()
        else:  # windows of 6: a window with image tokens routes them first
            sel, _ = window_partition(layer.selected[..., None].float(), 6)  # (9, 36, 1)
            img, _ = window_partition((~pad)[..., None].float(), 6)  # (9, 36, 1)
            routed_image = (sel * img).sum(dim=(1, 2))
            routed = sel.sum(dim=(1, 2))
            assert torch.equal(routed_image, torch.minimum(routed, img.sum(dim=(1, 2))))
    enc.skip_padding = False  # the paper's router scores padding like any token
    with torch.no_grad():
        _, plain = enc.forward_with_aux(x)
    if routing != "random":
        assert any((layer.selected & pad).any() for layer in plain.layers)


def test_padding_penalty_keeps_padding_below_the_image_and_in_its_own_order() -> None:
    """Padding logits go below every image logit without rounding into ties: a fixed 1e4 drop
    made 130 of 144 distinct logits in fp32, and onnxruntime broke the ties otherwise."""
    from biglittle_sam.modeling.router import penalize_padding

    g = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 12, 12, generator=g)  # (B, H, W)
    padding = torch.zeros(2, 12, 12, dtype=torch.bool)
    padding[:, 9:] = True
    scores[:, 9:, :6] = scores[:, 9:, :6] * 1e-3  # padding logits that differ by less than 1e-3
    out = penalize_padding(scores, padding)
    for b in range(2):
        assert out[b][padding[b]].max() < out[b][~padding[b]].min() - 29
        assert torch.equal(out[b][~padding[b]], scores[b][~padding[b]])
        pad_in, pad_out = scores[b][padding[b]], out[b][padding[b]]
        assert pad_out.unique().numel() == pad_in.unique().numel() == pad_in.numel()
        assert torch.equal(pad_in.argsort(), pad_out.argsort())  # the same order
    for b in range(2):  # the old fixed drop rounds the 18 close padding logits into ties
        assert (scores[b, 9:, :6] - 1e4).unique().numel() < 18
    scores.requires_grad_(True)
    penalize_padding(scores, padding).sum().backward()  # the span takes no gradient
    assert torch.equal(scores.grad, torch.ones_like(scores))


def test_update_norm_routing_routes_the_largest_big_block_updates() -> None:
    enc = _tiny_encoder(0.25, skip_padding=False)
    enc.routing = "update_norm"
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        _, aux = enc.forward_with_aux(x)
        layer = next(a for a in aux.layers if a.kind == "global")
        h = enc.patch_embed(x) + enc.pos_embed
        for blk in enc.blocks[: layer.layer]:
            h, _ = blk(h, 0.25)
        h = h + enc.blocks[layer.layer].little(h)
        norm = enc.blocks[layer.layer].update_norm(h, enc.blocks[layer.layer].norm1(h))
    torch.testing.assert_close(layer.scores, norm)
    chosen = norm.flatten()[layer.selected.flatten()]
    assert chosen.min() >= norm.flatten()[~layer.selected.flatten()].max()
