"""Photo-like shapes scenes: mostly background, objects in every size bin, exact masks."""

from __future__ import annotations

import numpy as np
import pytest

from biglittle_sam.data.scenes import SceneConfig, render_scene_image, size_bin


def test_size_bins_are_cocos_limits_relative_to_the_image() -> None:
    full = 640 * 640  # a COCO-sized image: COCO's own limits, 32^2 and 96^2 px
    assert [size_bin(a, full) for a in (31**2, 32**2, 95**2, 96**2)] == [
        "small", "medium", "medium", "large"
    ]  # fmt: skip
    assert size_bin(16**2, 320 * 320) == "medium"  # the same share of a smaller image
    with pytest.raises(ValueError, match="image_area"):
        size_bin(1.0, 0.0)


def test_scenes_are_mostly_background_with_objects_of_every_size() -> None:
    config = SceneConfig(size=128, seed=3)
    bins = set()
    for index in range(30):
        image, instances = render_scene_image(index, config)
        assert image.shape == (128, 128, 3) and image.dtype == np.uint8
        union = np.zeros((128, 128), dtype=int)
        for inst in instances:
            assert inst["mask"].any() and not inst["crowd"]
            union += inst["mask"]
            bins.add(size_bin(float(inst["mask"].sum()), 128 * 128))
        assert union.max() <= 1  # visible masks never overlap: each pixel has one owner
        assert union.mean() <= config.max_object_share
    assert bins == {"small", "medium", "large"}


def test_an_image_depends_on_its_seed_and_index_alone() -> None:
    a, masks_a = render_scene_image(5, SceneConfig(size=64, seed=1))
    b, masks_b = render_scene_image(5, SceneConfig(size=64, seed=1))
    assert np.array_equal(a, b) and len(masks_a) == len(masks_b)
    assert all(np.array_equal(x["mask"], y["mask"]) for x, y in zip(masks_a, masks_b))
    other, _ = render_scene_image(5, SceneConfig(size=64, seed=2))
    assert not np.array_equal(a, other)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"size": 8}, "size must be >= 16"),
        ({"min_objects": 3, "max_objects": 2}, "min_objects <= max_objects"),
        ({"min_side": 0.5, "max_side": 0.2}, "min_side < max_side"),
        ({"max_object_share": 1.0}, "max_object_share"),
    ],
)
def test_bad_scene_configs_are_refused(fields, message) -> None:
    with pytest.raises(ValueError, match=message):
        SceneConfig(**fields)
