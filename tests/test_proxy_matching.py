"""Dense students matched in encoder MACs to a big.LITTLE student (proxy benchmark v2)."""

from __future__ import annotations

import dataclasses

import pytest

from biglittle_sam.config import SAM_CONFIGS, biglittle_config_for
from biglittle_sam.flops import encoder_macs
from experiments.proxy.matching import matched_vit, one_in_three_globals

# A proxy-shaped teacher: 32 x 32 tokens, depth 6 with layers 2 and 5 global (one in three).
_SIZES = dict(img_size=256, patch_size=8, embed_dim=128, num_heads=4, depth=6, window_size=6)
TEACHER = dataclasses.replace(
    SAM_CONFIGS["vit_tiny"], name="proxy_t", global_attn_indexes=(2, 5), **_SIZES
)


@pytest.mark.parametrize("shrink", ["width", "depth"])
@pytest.mark.parametrize("ratio", [0.5, 0.25, 0.1])
def test_dense_students_match_the_biglittle_cost_within_5_percent(shrink, ratio) -> None:
    student = biglittle_config_for(TEACHER, "bl_proxy", little_dim=32, little_heads=1)
    target = encoder_macs(student, ratio)["total"]
    dense = matched_vit(target, TEACHER, shrink)
    assert abs(encoder_macs(dense)["total"] / target - 1) <= 0.05
    assert dense.embed_dim % dense.num_heads == 0 and dense.img_size == TEACHER.img_size
    if shrink == "width":
        assert dense.depth == TEACHER.depth and dense.embed_dim < TEACHER.embed_dim
    else:
        assert dense.depth < TEACHER.depth
        assert dense.global_attn_indexes == one_in_three_globals(dense.depth)


def test_sams_global_pattern() -> None:
    assert one_in_three_globals(12) == (2, 5, 8, 11)
    assert one_in_three_globals(6) == (2, 5) and one_in_three_globals(1) == (0,)


def test_an_unmatchable_cost_is_refused_before_training() -> None:
    with pytest.raises(
        ValueError, match="no width-shrunk proxy_t matches .* within 5%: the closest"
    ):
        matched_vit(1000, TEACHER, "width")
    with pytest.raises(ValueError, match="shrink must be one of"):
        matched_vit(10**9, TEACHER, "heads")
    with pytest.raises(ValueError, match="target_macs must be positive"):
        matched_vit(0, TEACHER)
