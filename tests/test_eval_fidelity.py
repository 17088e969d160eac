"""Embedding fidelity compares only the valid (unpadded) part of the embedding."""

from __future__ import annotations

import pytest
import torch

from biglittle_sam.eval import embedding_fidelity, valid_embedding_size


@pytest.mark.parametrize(
    "input_size, img_size, grid, expected",
    [
        ((1024, 768), 1024, 64, (64, 48)),
        ((683, 1024), 1024, 64, (43, 64)),  # 683 / 16 = 42.7: the partial row counts
        ((256, 171), 256, 16, (16, 11)),
        ((256, 256), 256, 16, (16, 16)),
    ],
)
def test_valid_region(input_size, img_size, grid, expected) -> None:
    assert valid_embedding_size(input_size, img_size, grid) == expected


def test_padding_is_ignored_and_values_are_right() -> None:
    torch.manual_seed(0)
    teacher = torch.randn(1, 8, 6, 6)
    student = teacher.clone()
    student[..., 4:, :] = 100.0  # rows that only see padding
    student[..., :, 5:] = -3.0
    mse, cos = embedding_fidelity(student, teacher, (4, 5))
    assert mse == 0.0 and cos == pytest.approx(1.0, abs=1e-6)
    mse, cos = embedding_fidelity(-teacher, teacher, (6, 6))
    assert cos == pytest.approx(-1.0, abs=1e-6)
    assert mse == pytest.approx(float((4 * teacher**2).mean()), rel=1e-5)
    scaled = 2 * teacher
    _, cos = embedding_fidelity(scaled, teacher, (3, 3))
    assert cos == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="differ"):
        embedding_fidelity(teacher[:, :4], teacher, (6, 6))
    with pytest.raises(ValueError, match="does not divide"):
        valid_embedding_size((10, 10), 100, 7)
