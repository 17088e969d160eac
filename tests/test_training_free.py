"""The training-free mode: SAM's blocks and weights, a cheap score, a rule for skipped tokens."""

from __future__ import annotations

import dataclasses
from typing import Dict, List

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor
from segment_anything.modeling.image_encoder import Block, window_partition, window_unpartition
from torch.utils.flop_counter import FlopCounterMode

from biglittle_sam import BIGLITTLE_CONFIGS, sam_model_registry
from biglittle_sam.build_sam import keep_ratio_context, load_sam, set_keep_ratio
from biglittle_sam.checkpoint import CheckpointError, save_model_checkpoint
from biglittle_sam.config import SKIP_RULES, TOKEN_SCORES, capacity
from biglittle_sam.flops import encoder_gmacs, encoder_macs, mac_split
from biglittle_sam.modeling import ImageEncoderBigLittle
from biglittle_sam.modeling.training_free import TrainingFreeBlock, routed_layers

from .conftest import randomize_

TF_TINY = dataclasses.replace(BIGLITTLE_CONFIGS["bl_tiny"], training_free=True)


def _block(window: int, grid: int, skip_rule: str = "copy", **kw: object) -> TrainingFreeBlock:
    """A randomized 8-wide block (2 heads) and its upstream twin's weights."""
    blk = TrainingFreeBlock(
        8,
        2,
        window_size=window,
        input_size=(grid, grid),
        select_window=window or 4,
        skip_rule=skip_rule,
        **kw,  # type: ignore[arg-type]
    )
    return randomize_(blk, std=0.3, seed=1).eval()


def _upstream(blk: TrainingFreeBlock, grid: int) -> Block:
    """segment_anything's own Block with ``blk``'s weights: the reference."""
    size = (blk.window_size, blk.window_size) if blk.window_size else (grid, grid)
    ref = Block(8, 2, use_rel_pos=True, window_size=blk.window_size, input_size=size)
    ref.load_state_dict(blk.state_dict(), strict=True)
    return ref.eval()


def _attention_only(ref: Block, x: torch.Tensor) -> torch.Tensor:
    """x + SAM's attention update, computed by the upstream block's parts (no MLP)."""
    h = ref.norm1(x)
    if ref.window_size > 0:
        hw = x.shape[1:3]
        h, pad_hw = window_partition(h, ref.window_size)  # (B * nW, w, w, C)
        h = window_unpartition(ref.attn(h), ref.window_size, pad_hw, hw)  # (B, H, W, C)
    else:
        h = ref.attn(h)
    return x + h


def test_keep_ratio_one_is_sam_and_the_weights_are_sams_alone(tiny_sam_checkpoint) -> None:
    sam = sam_model_registry["vit_tiny"](checkpoint=tiny_sam_checkpoint)
    tf = sam_model_registry["bl_tiny"](
        sam_checkpoint=tiny_sam_checkpoint, keep_ratio=1.0, training_free=True
    )
    assert tf.state_dict().keys() == sam.state_dict().keys()  # no E-blocks, no routers
    assert tf.image_encoder.teacher == "vit_tiny:sam_vit_tiny.pth"
    x = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        assert (tf.image_encoder(x) - sam.image_encoder(x)).abs().max().item() < 1e-5
        set_keep_ratio(tf, 0.5)  # the run-time ratio works as for big.LITTLE
        half = tf.image_encoder(x)
        with keep_ratio_context(tf, 1.0):
            assert (tf.image_encoder(x) - sam.image_encoder(x)).abs().max().item() < 1e-5
        assert torch.equal(tf.image_encoder(x), half)
    assert (half - sam.image_encoder(x)).abs().max().item() > 1e-3  # r = 0.5 does route


@pytest.mark.parametrize("window, grid", [(4, 8), (0, 8), (4, 6)])  # windowed, global, edge windows
@pytest.mark.parametrize("skip_rule", SKIP_RULES)
def test_chosen_rows_are_sams_block_rows(window: int, grid: int, skip_rule: str) -> None:
    blk = _block(window, grid, skip_rule)
    ref = _upstream(blk, grid)
    x = torch.randn(2, grid, grid, 8)
    with torch.no_grad():
        out, routing = blk(x, keep_ratio=0.3, return_routing=True)
        dense = ref(x)
        attn_only = _attention_only(ref, x)
    assert routing is not None
    scores, chosen, kmax, per_image = routing
    assert kmax == capacity(0.3, 16) and int(chosen.sum()) == 2 * per_image
    assert per_image < grid * grid
    torch.testing.assert_close(out[chosen], dense[chosen], atol=1e-4, rtol=1e-4)
    skipped = ~chosen
    if skip_rule == "identity":
        assert torch.equal(out[skipped], x[skipped])
    elif skip_rule == "mlp_skip":  # SparseSAM: every token's attention, no MLP when skipped
        torch.testing.assert_close(out[skipped], attn_only[skipped], atol=1e-4, rtol=1e-4)


def _copy_case() -> torch.Tensor:
    """One 4 x 4 window of 8-wide tokens: four outliers on the diagonal, each along its own
    direction d_i, and twelve background tokens along e plus a little of d_(j mod 4)."""
    d = torch.zeros(4, 8)
    for i in range(4):
        d[i, 2 * i], d[i, 2 * i + 1] = 1.0, -1.0  # zero-mean, orthogonal to each other and to e
    e = torch.tensor([1.0, 1, -1, -1, 1, 1, -1, -1])
    x = torch.zeros(16, 8)
    background = [j for j in range(16) if j not in (0, 5, 10, 15)]
    for i, pos in enumerate((0, 5, 10, 15)):
        x[pos] = 3.0 * d[i]
    for j, pos in enumerate(background):
        x[pos] = e + 0.3 * d[j % 4]
    return x.view(1, 4, 4, 8)


def test_copy_gives_each_skipped_token_its_most_similar_chosen_tokens_update() -> None:
    blk = _block(4, 4, "copy", token_score="window_mean")  # the case is made for this score
    with torch.no_grad():
        blk.norm1.weight.fill_(1.0)  # cosines of norm1 features are those of the hand-made ones
        blk.norm1.bias.zero_()
    ref = _upstream(blk, 4)
    x = _copy_case()
    with torch.no_grad():
        out, routing = blk(x, keep_ratio=0.25, return_routing=True)
        update = ref(x) - x  # (1, 4, 4, 8): SAM's block's update of every token
    assert routing is not None
    chosen = routing[1].view(16)
    outliers = [0, 5, 10, 15]
    assert chosen.nonzero().flatten().tolist() == outliers  # farthest from the window mean
    flat_x, flat_out, flat_update = x.view(16, 8), out.view(16, 8), update.view(16, 8)
    background = [j for j in range(16) if j not in outliers]
    for j, pos in enumerate(background):
        source = outliers[j % 4]
        expected = flat_x[pos] + flat_update[source]
        torch.testing.assert_close(flat_out[pos], expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(flat_out[outliers], (x + update).view(16, 8)[outliers])


def _mlp_rows(encoder: torch.nn.Module, x: torch.Tensor) -> List[int]:
    """Rows each block's MLP ran on in one forward pass."""
    rows: List[int] = []
    hooks = [
        blk.mlp.lin1.register_forward_hook(lambda m, i, o: rows.append(i[0].shape[:-1].numel()))
        for blk in encoder.blocks
    ]
    try:
        with torch.no_grad():
            encoder(x)
    finally:
        for h in hooks:
            h.remove()
    return rows


@pytest.mark.parametrize("skip_rule", SKIP_RULES)
@pytest.mark.parametrize("token_score", TOKEN_SCORES)
def test_choosing_tokens_never_runs_the_mlp_on_every_token(skip_rule, token_score) -> None:
    cfg = dataclasses.replace(
        TF_TINY, keep_ratio=0.25, skip_rule=skip_rule, token_score=token_score
    )
    encoder = ImageEncoderBigLittle(cfg).eval()
    x = torch.randn(1, 3, 256, 256)
    rows = _mlp_rows(encoder, x)
    N = cfg.grid_size**2
    assert routed_layers(cfg) == (False, True, True, True)  # the first layer stays dense
    assert rows[0] == N  # one MLP call per layer, and the routed ones see only chosen tokens
    routed = encoder.forward_with_aux(x)[1].layers[1].selected.sum().item()
    assert rows[1:] == [routed] * 3 and routed < N / 3


@pytest.mark.parametrize(
    "fields",
    [
        {"keep_ratio": 0.5},
        {"keep_ratio": 0.1, "pool_kv": True, "token_score": "edge"},
        {"keep_ratio": 0.25, "dense_global": True, "skip_rule": "mlp_skip"},
        {"keep_ratio": 0.5, "skip_rule": "identity", "dense_layers": ()},
        {"keep_ratio": 1.0},
    ],
)
def test_mac_count_matches_torchs_flop_counter(fields: Dict[str, object]) -> None:
    """FlopCounterMode counts the matrix products (scores are elementwise, LayerNorms uncounted):
    with the explicit attention path they equal ours exactly, and the total is within 3%."""
    cfg = dataclasses.replace(TF_TINY, fused_attn=False, **fields)  # type: ignore[arg-type]
    encoder = ImageEncoderBigLittle(cfg).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        encoder(torch.randn(1, 3, 256, 256))
    counted = counter.get_total_flops() / 2  # FLOPs -> MACs
    ours = encoder_macs(encoder)
    assert ours["little"] == 0
    assert ours["total"] - ours["norm"] - ours["router"] == counted
    assert abs(ours["total"] - counted) / counted < 0.03
    assert mac_split(encoder)["total"] == ours["total"]


def test_copy_matching_is_counted_and_the_full_size_mode_saves() -> None:
    copy = encoder_macs(dataclasses.replace(TF_TINY, keep_ratio=0.5))
    ident = encoder_macs(dataclasses.replace(TF_TINY, keep_ratio=0.5, skip_rule="identity"))
    assert copy["match"] > 0 and ident["match"] == 0
    assert copy["total"] - ident["total"] == copy["match"]
    tf_b = dataclasses.replace(BIGLITTLE_CONFIGS["bl_b"], training_free=True)
    sam = encoder_gmacs("vit_b")
    gmacs = {r: encoder_gmacs(tf_b, r) for r in (1.0, 0.5, 0.25)}
    assert gmacs[1.0] < sam  # SAM's block on the fused path (keys/values of real tokens only)
    assert gmacs[0.5] < 0.7 * sam and gmacs[0.25] < 0.5 * sam
    dense_global = encoder_gmacs(dataclasses.replace(tf_b, dense_global=True), 0.5)
    assert gmacs[0.5] < dense_global < gmacs[1.0]


def test_works_in_sam_predictor(tiny_sam_checkpoint) -> None:
    sam = sam_model_registry["bl_tiny"](checkpoint=tiny_sam_checkpoint, training_free=True)
    assert sam.image_encoder.keep_ratio == 0.5 and sam.image_encoder.config.training_free
    predictor = SamPredictor(sam)
    image = np.random.default_rng(0).integers(0, 255, (200, 240, 3), dtype=np.uint8)
    predictor.set_image(image)
    masks, scores, _ = predictor.predict(point_coords=np.array([[120, 100]]), point_labels=[1])
    assert masks.shape == (3, 200, 240) and scores.shape == (3,)


def test_a_training_free_checkpoint_rebuilds_itself(tiny_sam_checkpoint, tmp_path) -> None:
    sam = sam_model_registry["bl_tiny"](
        sam_checkpoint=tiny_sam_checkpoint, training_free=True, skip_rule="mlp_skip"
    )
    config = sam.image_encoder.config
    path = save_model_checkpoint(tmp_path / "tf.pth", sam, config, sam.image_encoder.teacher)
    again, stored, _ = load_sam(path)
    assert stored == config
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        assert torch.equal(again.image_encoder(x), sam.image_encoder(x))
    same = sam_model_registry["bl_tiny"](checkpoint=path, training_free=True)
    assert same.image_encoder.config.skip_rule == "mlp_skip"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"keep_ratio": 0.0}, r"keep_ratio must be in \(0, 1\]"),
        ({"keep_ratio": 1.5}, r"keep_ratio must be in \(0, 1\]"),
        ({"token_score": "nope"}, "token_score must be one of .*edge.*window_mean"),
        ({"skip_rule": "nope"}, "skip_rule must be one of .*copy"),
        ({"dense_layers": (7,)}, r"dense_layers \[7\] are outside 0..3"),
        ({"routing": "random"}, "training-free mode does not have"),
    ],
)
def test_bad_settings_fail_when_built(kwargs: Dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sam_model_registry["bl_tiny"](training_free=True, **kwargs)


def test_a_distilled_checkpoint_is_refused_naming_its_mode(tiny_sam_checkpoint, tmp_path) -> None:
    learned = sam_model_registry["bl_tiny"](sam_checkpoint=tiny_sam_checkpoint, training_free=False)
    path = save_model_checkpoint(tmp_path / "bl.pth", learned, learned.image_encoder.config)
    for kwargs in ({"checkpoint": path}, {"sam_checkpoint": path}):
        with pytest.raises(CheckpointError, match="learned mode: load it without training_free"):
            sam_model_registry["bl_tiny"](training_free=True, **kwargs)
    sam_model_registry["bl_tiny"](checkpoint=path)  # the mode that fits it
