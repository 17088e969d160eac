"""The speed paths compute what the eager fp32 encoder computes.

- ``torch.compile``: the whole encoder is one graph (``fullgraph=True``: no graph break, which
  static capacity makes possible) and equals eager within 1e-4. ``aot_eager`` checks the capture
  for every case in seconds; one inductor run checks the generated kernels on a 2-layer model,
  since inductor needs about 15-60 s of C++ compilation per graph on a 2-core CPU.
- Autocast (bf16 on CUDA for real users; tested here on CPU for dtype handling): the encoders run,
  return fp32 embeddings, keep LayerNorm in fp32 and stay close to fp32.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from biglittle_sam import sam_model_registry
from biglittle_sam.config import BigLittleConfig
from biglittle_sam.modeling import ImageEncoderViTFused, keep_ratio_context
from biglittle_sam.modeling.attention import Attention
from biglittle_sam.runtime.amp import NORM_TYPES, keep_norms_fp32

from .conftest import randomize_

HAS_POOL_KV = "pool_kv" in {f.name for f in dataclasses.fields(BigLittleConfig)}
needs_pool_kv = pytest.mark.skipif(not HAS_POOL_KV, reason="BigLittleConfig has no pool_kv yet")
# window_capacities is lru_cache'd; dynamo traces through the cache (a pure function of ints).
pytestmark = pytest.mark.filterwarnings("ignore:Dynamo detected a call to a `functools.lru_cache`")


def _encoder(name: str = "bl_tiny", seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    sam = sam_model_registry["vit_tiny" if name == "fast_tiny" else name](**overrides)
    # Noise everywhere, so E-blocks (gamma starts at 0), routers and rel-pos tables all count.
    enc = randomize_(sam.image_encoder, std=0.05, seed=seed)
    if name == "fast_tiny":
        enc = ImageEncoderViTFused.from_sam(enc)
    return enc.eval()


def _set_fused(encoder: torch.nn.Module, fused: bool) -> None:
    for m in encoder.modules():
        if isinstance(m, Attention):
            m.fused = fused


def _images(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, 256, 256, generator=torch.Generator().manual_seed(1))


# torch.compile -----------------------------------------------------------------------------------


# Two layers, one windowed (edge windows padded) and one global: every attention case, at half the
# compile time of bl_tiny's four.
TWO_LAYERS = {"depth": 2, "global_attn_indexes": (1,)}


@pytest.mark.parametrize(
    "keep_ratio, routing, pool_kv",
    [
        (0.5, "learned", False),
        (1.0, "learned", False),
        (0.5, "random", False),
        pytest.param(0.25, "learned", True, marks=needs_pool_kv),
    ],
)
def test_compile_one_graph_equals_eager(keep_ratio: float, routing: str, pool_kv: bool) -> None:
    torch._dynamo.reset()
    extra = {"pool_kv": True} if pool_kv else {}
    enc = _encoder(keep_ratio=keep_ratio, routing=routing, **TWO_LAYERS, **extra)
    compiled = torch.compile(enc, backend="aot_eager", fullgraph=True)  # a graph break raises
    x = _images()
    with torch.no_grad():
        torch.manual_seed(5)  # random routing draws from the global RNG, as eager does
        got = compiled(x)
        torch.manual_seed(5)
        want = enc(x)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


def test_compiled_encoder_follows_keep_ratio_changes() -> None:
    """The keep ratio is a Python float read in forward: dynamo guards on it and recompiles. The
    per-thread ratio of keep_ratio_context is read there too, still in one graph."""
    torch._dynamo.reset()
    enc = _encoder(keep_ratio=0.5, **TWO_LAYERS)
    compiled = torch.compile(enc, backend="aot_eager", fullgraph=True)
    x = _images()
    with torch.no_grad():
        for r in (0.5, 1.0, 0.5):
            enc.keep_ratio = r
            torch.testing.assert_close(compiled(x), enc(x), atol=1e-4, rtol=0)
        with keep_ratio_context(enc, 1.0):
            inside = compiled(x)
            torch.testing.assert_close(inside, enc(x), atol=1e-4, rtol=0)
        assert not torch.allclose(compiled(x), inside, atol=1e-4)  # back at 0.5 outside


def test_explain_reports_no_graph_break() -> None:
    torch._dynamo.reset()
    enc = _encoder(keep_ratio=0.25)
    with torch.no_grad():
        info = torch._dynamo.explain(enc)(_images(1))
    assert info.graph_count == 1 and info.graph_break_count == 0, info.break_reasons


def test_inductor_compiled_equals_eager() -> None:
    torch._dynamo.reset()
    enc = _encoder(keep_ratio=0.5, **TWO_LAYERS)
    compiled = torch.compile(enc, fullgraph=True)
    x = _images()
    with torch.inference_mode():
        torch.testing.assert_close(compiled(x), enc(x), atol=1e-4, rtol=0)


# Autocast ----------------------------------------------------------------------------------------

# Relative error ||y - y32|| / ||y32|| of the embedding. A bf16 product is rounded to 8 significant
# bits (unit roundoff u = 2^-8 ~ 0.0039); every layer adds about one rounding of the residual
# update, mostly averaging out, and the fp32 LayerNorms re-centre the stream. On the tiny models the
# measured error is 0.003 to 0.005 (about 1 u), also at keep ratio 0.5 where a rounded router score
# can swap a near-tied token. The bound, 4 u, leaves room for other seeds and still fails on real
# bugs (a norm in bf16 over the stream, a dropped bias, wrong routing: errors of 0.05 and more).
# fp16 has 11 significant bits (u = 2^-11), measured about 0.0005; bound again 4 u.
REL_TOL = {torch.bfloat16: 4 * 2.0**-8, torch.float16: 4 * 2.0**-11}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "reference"])
@pytest.mark.parametrize(
    "name, overrides",
    [
        ("vit_tiny", {}),
        ("fast_tiny", {}),
        ("bl_tiny", {"keep_ratio": 0.5}),
        ("bl_tiny", {"keep_ratio": 1.0}),
        pytest.param("bl_tiny", {"keep_ratio": 0.25, "pool_kv": True}, marks=needs_pool_kv),
    ],
    ids=["vit_tiny", "fast_tiny", "bl_tiny-r0.5", "bl_tiny-r1", "bl_tiny-r0.25-pooled"],
)
def test_autocast_close_to_fp32(name: str, overrides: dict, fused: bool, dtype) -> None:
    if name == "vit_tiny" and not fused:
        pytest.skip("segment_anything's encoder has a single attention path")
    enc = _encoder(name, **overrides)
    _set_fused(enc, fused)
    x = _images()
    with torch.no_grad():
        want = enc(x)
        assert keep_norms_fp32(enc) > 0
        norm_dtypes = set()
        hooks = [
            m.register_forward_hook(lambda m, i, o: norm_dtypes.add(o.dtype))
            for m in enc.modules()
            if isinstance(m, NORM_TYPES)
        ]
        with torch.autocast("cpu", dtype=dtype):
            got = enc(x)
        for h in hooks:
            h.remove()
    assert norm_dtypes == {torch.float32}  # every LayerNorm ran in fp32
    assert got.dtype == torch.float32 and got.shape == want.shape  # the neck ends in a norm
    assert torch.isfinite(got).all()
    rel = ((got - want).norm() / want.norm()).item()
    assert rel < REL_TOL[dtype], f"relative error {rel:.4f} under {dtype}"


def test_autocast_matmuls_do_run_in_low_precision() -> None:
    """Guards the test above against a no-op autocast: the projections really run in bf16."""
    enc = _encoder(keep_ratio=0.5)
    keep_norms_fp32(enc)
    seen = set()
    lin = enc.blocks[0].mlp.lin1
    hook = lin.register_forward_hook(lambda m, i, o: seen.add(o.dtype))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        enc(_images(1))
    hook.remove()
    assert seen == {torch.bfloat16}


def test_batched_predictor_under_autocast() -> None:
    """The whole SamPredictor path (preprocess, encoder, decoder) runs under bf16 autocast."""
    import numpy as np

    from biglittle_sam.predictor import BatchedSamPredictor

    torch.manual_seed(0)
    sam = randomize_(sam_model_registry["bl_tiny"](keep_ratio=0.5), std=0.05)
    keep_norms_fp32(sam)
    predictor = BatchedSamPredictor(sam)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (60, 90, 3), dtype=np.uint8) for _ in range(2)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        predictor.set_images(images)
        results = predictor.predict_batch(box=[np.array([5, 5, 50, 40])] * 2)
    for masks, iou, low_res in results:
        assert masks.shape == (3, 60, 90) and masks.dtype == bool
        assert np.isfinite(iou).all() and np.isfinite(low_res).all()


# Profiling ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("pool_kv", [False, pytest.param(True, marks=needs_pool_kv)])
def test_profile_finds_no_host_sync(pool_kv: bool, capsys) -> None:
    """No item / nonzero / masked_select in the forward pass, edge windows (slots) included."""
    from biglittle_sam.profile import format_table, profile_encoder
    from tools import profile_encoder as tool

    result = profile_encoder("bl_tiny", keep_ratio=0.25, pool_kv=pool_kv, batch_size=2)
    assert result.host_syncs == {}, result.host_syncs
    assert result.operators and result.operators[0].self_cpu_ms >= result.operators[-1].self_cpu_ms
    assert sum(o.self_cpu_share for o in result.operators) == pytest.approx(1.0)
    table = format_table(result, top=5)
    assert table.count("\n| aten::") == 5 and "Host syncs per forward: none" in table
    args = ["--model", "bl_tiny", "--keep-ratio", "0.25", "--top", "3", "--warmup", "0"]
    report = tool.main(args + (["--pool-kv"] if pool_kv else []))
    assert report["pool_kv"] is pool_kv and "| operator |" in capsys.readouterr().out


def test_profile_tool_rejects_bad_options(capsys) -> None:
    from tools import profile_encoder as tool

    with pytest.raises(SystemExit) as info:
        tool.main(["--model", "vit_tiny", "--pool-kv"])
    assert info.value.code == 2 and "big.LITTLE option" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tool.main(["--model", "nope"])
    assert "unknown model config" in capsys.readouterr().err
