"""The encoder alone owns ``keep_ratio`` and ``pool_kv`` at run time; the config records the values
the model was built with; one validator checks every keep ratio."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from biglittle_sam import BIGLITTLE_CONFIGS, ImageEncoderBigLittle, sam_model_registry
from biglittle_sam.config import validate_keep_ratio
from biglittle_sam.eval.predictor import SamMaskPredictor
from biglittle_sam.flops import encoder_macs
from biglittle_sam.modeling import get_keep_ratio, keep_ratio_context, model_config

from .conftest import randomize_

TINY = BIGLITTLE_CONFIGS["bl_tiny"]


def _encoder(**overrides: object) -> ImageEncoderBigLittle:
    torch.manual_seed(0)
    enc = ImageEncoderBigLittle(dataclasses.replace(TINY, **overrides))
    randomize_(enc, std=0.1)
    for b in enc.blocks:
        torch.nn.init.constant_(b.little.gamma, 0.3)
    return enc.eval()


def test_flops_ask_the_encoder_not_its_config() -> None:
    enc = _encoder(keep_ratio=0.5, pool_kv=False)
    enc.keep_ratio = 0.25
    enc.pool_kv = True
    assert (enc.config.keep_ratio, enc.config.pool_kv) == (0.5, False)  # as built
    built_so = dataclasses.replace(TINY, keep_ratio=0.25, pool_kv=True)
    assert encoder_macs(enc) == encoder_macs(built_so)
    assert encoder_macs(enc) != encoder_macs(enc.config)
    with keep_ratio_context(enc, 0.1):
        assert encoder_macs(enc) == encoder_macs(built_so, keep_ratio=0.1)
    assert encoder_macs(enc, keep_ratio=1.0, pool_kv=False) == encoder_macs(TINY, 1.0, False)


def test_pool_kv_set_at_run_time_equals_built_with_it() -> None:
    """Bit-identical: switching pooling on the encoder is the same model as building with it."""
    built = _encoder(keep_ratio=0.25, pool_kv=True)
    switched = _encoder(keep_ratio=0.25, pool_kv=False)
    x = torch.randn(2, 3, TINY.img_size, TINY.img_size)
    with torch.no_grad():
        dense_keys = switched(x)
        switched.pool_kv = True
        pooled = switched(x)
        want = built(x)
    torch.testing.assert_close(pooled, want, rtol=0, atol=0)
    assert not torch.equal(pooled, dense_keys)
    assert model_config(switched).pool_kv is False  # the config still records the build


@pytest.mark.parametrize("bad", [True, False, "0.5", None, torch.tensor(0.5), 0, 1.01])
def test_one_validator_refuses_non_numbers(bad: object) -> None:
    with pytest.raises(ValueError, match="keep_ratio"):
        validate_keep_ratio(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="keep_ratio"):
        dataclasses.replace(TINY, keep_ratio=bad)
    enc = _encoder()
    with pytest.raises(ValueError, match="keep_ratio"):
        enc.keep_ratio = bad  # type: ignore[assignment]


def test_one_validator_accepts_real_numbers() -> None:
    assert validate_keep_ratio(1) == 1.0 and isinstance(validate_keep_ratio(1), float)
    assert validate_keep_ratio(np.float32(0.25)) == 0.25
    assert validate_keep_ratio(np.float64(0.5)) == 0.5


def test_eval_predictors_sharing_a_model_leave_its_ratio_alone() -> None:
    sam = sam_model_registry["bl_tiny"](keep_ratio=0.5)
    randomize_(sam.image_encoder, std=0.1)
    sam.eval()
    image = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    quarter = SamMaskPredictor(sam, keep_ratio=0.25)
    full = SamMaskPredictor(sam, keep_ratio=1.0)
    quarter.set_image(image)
    assert get_keep_ratio(sam) == 0.5
    full.set_image(image)
    assert get_keep_ratio(sam) == 0.5
    assert not torch.equal(quarter.embedding(), full.embedding())
    sam.image_encoder.keep_ratio = 0.25
    own = SamMaskPredictor(sam)  # None: the model's own ratio
    own.set_image(image)
    torch.testing.assert_close(own.embedding(), quarter.embedding(), rtol=0, atol=0)
