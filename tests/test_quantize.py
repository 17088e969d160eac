"""Dynamic int8 in PyTorch (biglittle_sam.quantize) on the tiny models.

Stated tolerance, on random-weight tiny encoders (weights ~ N(0, 0.1)): every image's int8
embedding has cosine >= 0.999 with its fp32 embedding, and the relative L2 error over the batch is
<= 3% (measured: 0.2% for vit_tiny and bl_tiny at r = 1, 1.2% for bl_tiny at r = 0.5).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor
from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

from biglittle_sam import sam_model_registry
from biglittle_sam.quantize import int8_linear_names, is_int8, quantize_encoder_int8

from .conftest import randomize_

COSINE_MIN = 0.999
REL_L2_MAX = 0.03


def _close(fp32: torch.Tensor, int8: torch.Tensor) -> None:
    cosine = torch.nn.functional.cosine_similarity(fp32.flatten(1), int8.flatten(1))
    assert cosine.min().item() >= COSINE_MIN
    assert ((fp32 - int8).norm() / fp32.norm()).item() <= REL_L2_MAX


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("vit_tiny", {}),
        ("bl_tiny", {"keep_ratio": 1.0}),
        ("bl_tiny", {"keep_ratio": 0.5}),
        ("bl_tiny", {"keep_ratio": 0.25, "pool_kv": True, "little_dim": 8}),  # bl_b_lite's cuts
    ],
)
def test_int8_encoder_stays_within_tolerance_of_fp32(name: str, kwargs) -> None:
    torch.manual_seed(0)
    model = sam_model_registry[name](**kwargs)
    randomize_(model.image_encoder, std=0.1)
    int8 = quantize_encoder_int8(model)
    assert is_int8(int8) and not is_int8(model)  # a copy: the fp32 model is untouched
    x = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        _close(model.image_encoder(x), int8.image_encoder(x))


def test_which_linears_are_quantised() -> None:
    bl = sam_model_registry["bl_tiny"]()
    names = int8_linear_names(bl)
    assert "blocks.0.mlp.lin1" in names and "blocks.0.little.down" in names
    assert "blocks.0.attn.proj" in names and "blocks.0.router.score" in names
    assert not any(n.endswith("attn.qkv") for n in names)  # applied as weight slices
    int8 = quantize_encoder_int8(bl)
    modules = dict(int8.image_encoder.named_modules())
    assert all(isinstance(modules[n], DynamicLinear) for n in names)
    assert isinstance(modules["blocks.0.attn.qkv"], torch.nn.Linear)
    # segment_anything's own attention calls qkv as a module: quantised there.
    assert "blocks.0.attn.qkv" in int8_linear_names(sam_model_registry["vit_tiny"]())
    assert isinstance(int8.mask_decoder.transformer.layers[0].mlp.lin1, torch.nn.Linear)


def test_fp32_exactness_at_keep_ratio_one_is_untouched(tiny_sam_checkpoint) -> None:
    sam = sam_model_registry["vit_tiny"](checkpoint=tiny_sam_checkpoint)
    bl = sam_model_registry["bl_tiny"](sam_checkpoint=tiny_sam_checkpoint, keep_ratio=1.0)
    quantize_encoder_int8(bl)
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        assert (sam.image_encoder(x) - bl.image_encoder(x)).abs().max().item() < 1e-4


def test_int8_model_works_in_the_predictor(tiny_bl) -> None:
    randomize_(tiny_bl.image_encoder, std=0.1)
    int8 = quantize_encoder_int8(tiny_bl, inplace=True)
    assert int8 is tiny_bl
    image = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    predictor = SamPredictor(int8)
    predictor.set_image(image)
    masks, scores, _ = predictor.predict(point_coords=np.array([[40, 30]]), point_labels=[1])
    assert masks.shape == (3, 96, 128) and np.isfinite(scores).all()


def test_refuses_a_quantised_model_and_gpu_models() -> None:
    int8 = quantize_encoder_int8(sam_model_registry["bl_tiny"]())
    with pytest.raises(ValueError, match="already"):
        quantize_encoder_int8(int8)
    with torch.device("meta"):
        meta = sam_model_registry["bl_tiny"]()
    with pytest.raises(ValueError, match="runs on the CPU"):
        quantize_encoder_int8(meta)
