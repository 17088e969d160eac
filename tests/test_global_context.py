"""Global context for skipped tokens (``global_context``, modeling/global_context.py): exactness
at r = 1 and at init, the reach beyond a window, checkpoint layouts, MACs, bad input, export."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Tuple

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from biglittle_sam import BIGLITTLE_CONFIGS, ImageEncoderBigLittle, sam_model_registry
from biglittle_sam.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    checkpoint_payload,
    read_checkpoint,
    save_model_checkpoint,
)
from biglittle_sam.config import GLOBAL_CONTEXTS, config_from_dict, config_to_dict
from biglittle_sam.flops import encoder_gmacs, encoder_macs, mac_split
from biglittle_sam.modeling import NearestContext, PooledContext

from .conftest import randomize_

# bl_tiny as a model from before the field: 16 x 16 grid, windows of 6, global layers 1 and 3.
TINY = dataclasses.replace(BIGLITTLE_CONFIGS["bl_tiny"], global_context="none")
CONTEXTS = ("pooled", "nearest")
# A windowed and a global layer: every case at half bl_tiny's time (tests share 2 busy cores).
TWO_LAYERS = {"depth": 2, "global_attn_indexes": (1,)}


def _config(context: str, keep_ratio: float = 0.5, **fields: object):
    return dataclasses.replace(
        TINY, global_context=context, global_context_pool=4, keep_ratio=keep_ratio, **fields
    )


def _encoder(context: str, keep_ratio: float = 0.5, **fields: object) -> ImageEncoderBigLittle:
    """A randomized tiny encoder (E-blocks live, context modules live, same seed every time)."""
    torch.manual_seed(0)
    return randomize_(ImageEncoderBigLittle(_config(context, keep_ratio, **fields)), 0.1).eval()


def _contexts(encoder: ImageEncoderBigLittle) -> list:
    return [b.context for b in encoder.blocks if b.context is not None]


def _images(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, 256, 256, generator=torch.Generator().manual_seed(1))


def test_only_global_layers_get_a_module() -> None:
    for context, kind in (("pooled", PooledContext), ("nearest", NearestContext)):
        enc = _encoder(context)
        assert [i for i, b in enumerate(enc.blocks) if b.context is not None] == [1, 3]
        assert all(isinstance(m, kind) for m in _contexts(enc))
    assert _contexts(_encoder("none")) == []
    assert not any(".context." in k for k in _encoder("none").state_dict())


@pytest.mark.parametrize("context", GLOBAL_CONTEXTS)
def test_exact_sam_at_keep_ratio_one(tiny_sam_checkpoint: Path, context: str) -> None:
    """r = 1 is SAM with the path on, even with the context modules' weights far from init."""
    sam = sam_model_registry["vit_tiny"](checkpoint=tiny_sam_checkpoint)
    bl = sam_model_registry["bl_tiny"](
        sam_checkpoint=tiny_sam_checkpoint,
        keep_ratio=1.0,
        training_free=False,
        global_context=context,
        global_context_pool=4,
    )
    for module in _contexts(bl.image_encoder):
        randomize_(module, std=0.3)
    x = _images()
    with torch.no_grad():
        assert (sam.image_encoder(x) - bl.image_encoder(x)).abs().max().item() < 1e-4


@pytest.mark.parametrize("context", CONTEXTS)
@pytest.mark.parametrize("keep_ratio", [1.0, 0.25])
def test_fresh_modules_change_nothing(context: str, keep_ratio: float) -> None:
    """The init rule (zero output projection / zero gate): the old layer's output at every r."""
    old = _encoder("none", keep_ratio, **TWO_LAYERS)
    new = ImageEncoderBigLittle(_config(context, keep_ratio, **TWO_LAYERS)).eval()
    new.load_state_dict(old.state_dict(), strict=False)  # the context modules keep their init
    x = _images()
    with torch.no_grad():
        assert torch.equal(old(x), new(x))


def _skipped_far_token(routed: torch.Tensor) -> Tuple[int, int]:
    """A token of the top-left window (rows and columns 0..5) that was skipped."""
    for i in range(6):
        for j in range(6):
            if not routed[i, j]:
                return i, j
    raise AssertionError("every token of the window was routed")


@pytest.mark.parametrize("context", GLOBAL_CONTEXTS)
def test_skipped_token_sees_beyond_its_window(context: str) -> None:
    """In a global layer at r < 1, a skipped token's output depends on a token in another window
    (the bottom-right corner) with the path on, and not at all with it off."""
    block = _encoder(context, 0.25).blocks[1]
    assert block.window_size == 0 and block.little.window_size == 6
    x = torch.randn(1, 16, 16, 64, generator=torch.Generator().manual_seed(2))
    far = x.clone()
    far[0, 15, 15] += 3 * torch.randn(64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out, routing = block(x, 0.25, return_routing=True)
        out_far, routing_far = block(far, 0.25, return_routing=True)
    assert routing is not None and routing_far is not None
    i, j = _skipped_far_token(routing[1][0] | routing_far[1][0])
    change = (out_far[0, i, j] - out[0, i, j]).abs().max().item()
    if context == "none":
        assert change == 0.0
    else:  # through the pooled grid, or the update of a routed token that attended to it
        assert change > 1e-6


@pytest.mark.parametrize("context", CONTEXTS)
def test_every_context_parameter_learns_from_init(context: str) -> None:
    """From its zero start the output projection (or gate) gets a gradient, so training moves
    it; the routed tokens (every token at r = 1) never reach the module."""
    torch.manual_seed(0)
    enc = ImageEncoderBigLittle(_config(context, 0.3, **TWO_LAYERS)).train()
    for b in enc.blocks:
        torch.nn.init.constant_(b.little.gamma, 0.1)
    (enc(_images()) ** 2).mean().backward()
    first = {"pooled": "proj.weight", "nearest": "gate"}[context]
    for module in _contexts(enc):
        grad = dict(module.named_parameters())[first].grad
        assert grad is not None and grad.abs().sum() > 0


def test_old_layout_checkpoint_loads_with_outputs_unchanged(tmp_path: Path) -> None:
    old = sam_model_registry["bl_tiny"](keep_ratio=0.5, global_context="none")
    randomize_(old.image_encoder, std=0.1)
    path = save_model_checkpoint(tmp_path / "old.pth", old, old.image_encoder.config)
    payload = read_checkpoint(path)
    assert payload["version"] == 1 and "global_context" not in payload["config"]
    x = _images(1)
    with torch.no_grad():
        expected = old.image_encoder(x)
        same = sam_model_registry["bl_tiny"](checkpoint=path).image_encoder
        assert torch.equal(same(x), expected)
        for context in CONTEXTS:  # switched on over an old file: its missing keys start at init
            sam = sam_model_registry["bl_tiny"](
                checkpoint=path, global_context=context, global_context_pool=4
            )
            assert len(_contexts(sam.image_encoder)) == 2
            assert torch.equal(sam.image_encoder(x), expected)


def test_new_layout_checkpoint_round_trips_and_names_its_version(tmp_path: Path) -> None:
    sam = sam_model_registry["bl_tiny"](global_context="pooled", global_context_pool=4)
    randomize_(sam.image_encoder, std=0.1)
    config = sam.image_encoder.config
    path = save_model_checkpoint(tmp_path / "new.pth", sam, config)
    payload = read_checkpoint(path)
    assert payload["version"] == 2 < FORMAT_VERSION
    assert payload["config"]["global_context"] == "pooled"
    assert any(".context." in k for k in payload["model"])
    loaded = sam_model_registry["bl_tiny"](checkpoint=path)
    x = _images(1)
    with torch.no_grad():
        assert torch.equal(loaded.image_encoder(x), sam.image_encoder(x))
    # A file from a layout newer than this code: refused, naming both versions.
    newer = checkpoint_payload(sam, config)
    newer["version"] = FORMAT_VERSION + 1
    torch.save(newer, tmp_path / "newer.pth")
    too_new = rf"version {FORMAT_VERSION + 1} is newer .*version {FORMAT_VERSION} at most"
    with pytest.raises(CheckpointError, match=too_new):
        sam_model_registry["bl_tiny"](checkpoint=tmp_path / "newer.pth")
    # Code from before the field (which refuses unknown config fields) still reads "none" files.
    assert "global_context" not in config_to_dict(TINY)
    assert config_from_dict(config_to_dict(TINY)) == TINY  # a missing field is "none"
    assert config_from_dict(config_to_dict(config)) == config


@functools.lru_cache(maxsize=None)
def _counted(context: str, keep_ratio: float) -> float:
    """MACs of the two-layer encoder as FlopCounterMode counts them (explicit attention)."""
    cfg = _config(context, keep_ratio, fused_attn=False, **TWO_LAYERS)
    enc = ImageEncoderBigLittle(cfg).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        enc(_images(1))
    return counter.get_total_flops() / 2  # FLOPs -> MACs


@pytest.mark.parametrize("context", CONTEXTS)
@pytest.mark.parametrize("keep_ratio", [1.0, 0.25])
def test_macs_match_torchs_flop_counter(context: str, keep_ratio: float) -> None:
    """The context modules' matrix products, as FlopCounterMode counts them, are exactly
    ``encoder_macs``'s "context" part (the rest of the model is the same with the path off)."""
    ours = encoder_macs(_config(context, keep_ratio, **TWO_LAYERS))
    base = encoder_macs(_config("none", keep_ratio, **TWO_LAYERS))
    assert ours["total"] - base["total"] == ours["context"]
    assert _counted(context, keep_ratio) - _counted("none", keep_ratio) == ours["context"]
    assert (ours["context"] > 0) == (keep_ratio < 1.0)
    assert (
        mac_split(_config(context, keep_ratio))["total"]
        == encoder_macs(_config(context, keep_ratio))["total"]
    )


def test_full_size_cost_stays_under_ten_percent() -> None:
    """bl_b at r = 0.25: at most +10% of the 209.3 GMACs without a module, with either module;
    the default ("pooled", P = 8) is 214.6."""
    none = dataclasses.replace(BIGLITTLE_CONFIGS["bl_b"], global_context="none")
    base = encoder_gmacs(none, 0.25)
    assert 209.0 < base < 209.6
    assert 214.4 < encoder_gmacs("bl_b", 0.25) < 214.8
    for context in CONTEXTS:
        cfg = dataclasses.replace(BIGLITTLE_CONFIGS["bl_b"], global_context=context)
        assert base < encoder_gmacs(cfg, 0.25) <= 230.0
        assert encoder_gmacs(cfg, 1.0) == encoder_gmacs(none, 1.0)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"global_context": "global"}, r"global_context must be one of \('none', 'pooled'"),
        ({"global_context": "pooled", "global_context_pool": 5}, r"divide 16 \(one of \[1, 2"),
        ({"global_context": "pooled", "global_context_pool": 32}, "got 32"),
    ],
)
def test_bad_input_is_refused_when_the_model_is_built(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sam_model_registry["bl_tiny"](**fields)
    with pytest.raises(ValueError, match=message):
        config_from_dict({**config_to_dict(TINY), **fields})


def test_the_training_free_mode_has_no_context_module() -> None:
    """A learned module, so the training-free mode (nothing trained) always reads "none", even
    under bl_b's default "pooled"; its copy rule is its own cheap view of routed updates."""
    for fields in ({}, {"global_context": "nearest"}):
        sam = sam_model_registry["bl_tiny"](training_free=True, **fields)
        assert sam.image_encoder.config.global_context == "none"
        assert not [b for b in sam.image_encoder.blocks if getattr(b, "context", None)]
    # ... so its pool size is not checked either: 5 does not divide bl_tiny's 16 x 16 grid
    assert sam_model_registry["bl_tiny"](training_free=True, global_context_pool=5)


def test_nearest_copies_the_most_similar_routed_update() -> None:
    """Each skipped token adds gate * the update of the routed token with the closest norm1."""
    block = _encoder("nearest", 0.25).blocks[3]
    torch.nn.init.ones_(block.context.gate)
    x = torch.randn(1, 16, 16, 64, generator=torch.Generator().manual_seed(4))
    block.context = None
    with torch.no_grad():
        plain, routing = block(x, 0.25, return_routing=True)
    block.context = NearestContext(64)
    torch.nn.init.ones_(block.context.gate)
    with torch.no_grad():
        out, _ = block(x, 0.25)
        xn = block.norm1(x + block.little(x)).reshape(256, 64)
    assert routing is not None
    routed = routing[1].reshape(256)
    unit = torch.nn.functional.normalize(xn, dim=-1)
    rows = routed.nonzero().squeeze(1)
    match = rows[(unit @ unit[rows].T).argmax(dim=1)]  # (256,) the nearest routed row
    delta = (plain - x - block.little(x).detach()).reshape(256, 64)
    expected = plain.reshape(256, 64) + torch.where(routed[:, None], 0.0, delta[match])
    torch.testing.assert_close(out.reshape(256, 64), expected, atol=1e-5, rtol=1e-5)


def test_torch_compile_one_graph_equals_eager() -> None:
    torch._dynamo.reset()
    for context in CONTEXTS:  # one global layer: the capture is what matters, not the depth
        enc = _encoder(context, 0.5, depth=1, global_attn_indexes=(0,))
        compiled = torch.compile(enc, backend="aot_eager", fullgraph=True)
        x = _images()
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), enc(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("context", CONTEXTS)
def test_onnx_export_matches_pytorch(context: str, tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from biglittle_sam.export import compare_image_encoder, export_image_encoder

    torch.manual_seed(0)
    sam = sam_model_registry["bl_tiny"](
        global_context=context, global_context_pool=4, **TWO_LAYERS  # type: ignore[arg-type]
    )
    for blk in sam.image_encoder.blocks:  # give every new path weight, as test_export_onnx does
        torch.nn.init.normal_(blk.little.gamma, std=0.1)
    for module in _contexts(sam.image_encoder):
        for p in module.parameters():
            torch.nn.init.normal_(p, std=0.1)
    torch.nn.init.normal_(sam.image_encoder.pos_embed, std=0.02)  # no top-k ties (docs/export.md)
    path = export_image_encoder(sam, tmp_path / f"{context}.onnx", keep_ratio=0.5)
    assert compare_image_encoder(sam, path, _images()) < 1e-3


def test_proxy_students_take_the_setting_and_check_it_up_front() -> None:
    from experiments.proxy import ProxyBenchmarkSettings

    # proxy v1's students have none unless asked (its tables predate the field)
    assert dict(ProxyBenchmarkSettings().student_overrides)["global_context"] == "none"
    pooled = ProxyBenchmarkSettings(student_global_context="pooled")
    assert dict(pooled.student_overrides)["global_context_pool"] == 4
    pooled.check()  # 4 divides the 16 x 16 grid
    with pytest.raises(ValueError, match=r"must divide 16"):
        ProxyBenchmarkSettings(
            student_global_context="pooled", student_global_context_pool=6
        ).check()


@pytest.mark.parametrize("context", CONTEXTS)
def test_with_pooled_keys_and_int8(context: str) -> None:
    """pool_kv and dynamic int8 Linear layers keep working with the path on."""
    from biglittle_sam.quantize import int8_linear_names, quantize_encoder_int8

    torch.manual_seed(0)
    sam = sam_model_registry["bl_tiny"](
        keep_ratio=0.25, pool_kv=True, global_context=context, global_context_pool=4, **TWO_LAYERS
    )
    randomize_(sam.image_encoder, std=0.1)
    old = sam_model_registry["bl_tiny"](
        keep_ratio=0.25, pool_kv=True, global_context="none", **TWO_LAYERS
    )
    old.image_encoder.load_state_dict(sam.image_encoder.state_dict(), strict=False)
    x = _images()
    with torch.no_grad():
        assert (sam.image_encoder(x) - old.image_encoder(x)).abs().max() > 1e-4
        if context == "pooled":
            assert "blocks.1.context.proj" in int8_linear_names(sam)
        fp32 = sam.image_encoder(x)
        int8 = quantize_encoder_int8(sam).image_encoder(x)
    cosine = torch.nn.functional.cosine_similarity(fp32.flatten(1), int8.flatten(1))
    assert cosine.min().item() >= 0.999
