"""The synthetic shapes generator: exact masks in every format, determinism, coverage, CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from biglittle_sam.data import CocoDataset, SA1BDataset, ShapesConfig, make_shapes_dataset
from biglittle_sam.data.shapes import (
    TOKEN_BINS,
    describe_shapes,
    render_shapes_image,
    token_sized_shapes_config,
    uncompressed_rle,
)
from biglittle_sam.eval.metrics import area_bins
from tests.eval_helpers import SMALL_SIZES, read_json
from tools.make_shapes_dataset import main as make_shapes_main

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def test_rendering_is_deterministic_and_masks_are_disjoint() -> None:
    config = ShapesConfig(num_images=3, sizes=SMALL_SIZES, seed=11)
    for index in range(3):
        image_a, inst_a = render_shapes_image(index, config)
        image_b, inst_b = render_shapes_image(index, config)
        np.testing.assert_array_equal(image_a, image_b)
        assert len(inst_a) == len(inst_b)
        covered = np.zeros(image_a.shape[:2], dtype=np.int32)
        for a, b in zip(inst_a, inst_b):
            np.testing.assert_array_equal(a["mask"], b["mask"])
            covered += a["mask"]
        assert covered.max() == 1  # visible masks never overlap
    other, _ = render_shapes_image(0, ShapesConfig(num_images=1, sizes=SMALL_SIZES, seed=12))
    assert other.shape != image_a.shape or not np.array_equal(other, image_a)


def test_annotations_decode_to_the_rendered_masks(eval_shapes) -> None:
    data = read_json(eval_shapes.coco_annotations)
    config = ShapesConfig(num_images=5, sizes=SMALL_SIZES, seed=3)
    kinds = {"polygon": 0, "rle": 0, "crowd": 0}
    by_image = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    for index in range(5):
        _, instances = render_shapes_image(index, config)
        anns = by_image[index + 1]
        assert len(anns) == len(instances)
        for ann, inst in zip(anns, instances):
            h, w = inst["mask"].shape
            seg = ann["segmentation"]
            if isinstance(seg, list):
                kinds["polygon"] += 1
                rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
            elif isinstance(seg["counts"], list):
                kinds["crowd"] += 1
                assert ann["iscrowd"] == 1
                rle = mask_utils.frPyObjects(seg, h, w)
            else:
                kinds["rle"] += 1
                rle = seg
            np.testing.assert_array_equal(mask_utils.decode(rle).astype(bool), inst["mask"])
            assert ann["area"] == inst["mask"].sum()
            x, y, bw, bh = ann["bbox"]
            ys, xs = np.nonzero(inst["mask"])
            assert (x, y, bw, bh) == (
                xs.min(),
                ys.min(),
                xs.max() - xs.min() + 1,
                ys.max() - ys.min() + 1,
            )
    assert all(n > 0 for n in kinds.values()), kinds


def test_uncompressed_rle_round_trips() -> None:
    rng = np.random.default_rng(0)
    for first in (False, True):
        mask = rng.random((7, 9)) < 0.5
        mask[0, 0] = first
        rle = uncompressed_rle(mask)
        assert sum(rle["counts"]) == 63
        back = mask_utils.decode(mask_utils.frPyObjects(rle, 7, 9)).astype(bool)
        np.testing.assert_array_equal(back, mask)


def test_default_dataset_covers_sizes_edge_cases_and_formats(tmp_path: Path) -> None:
    out = make_shapes_dataset(tmp_path, ShapesConfig())
    data = read_json(out.coco_annotations)
    bins = {b for a in data["annotations"] for b in area_bins(a["area"])}
    assert bins == {"small", "medium", "large"}
    areas = [a["area"] for a in data["annotations"]]
    assert 1.0 in areas  # the one-pixel object
    sizes = {(img["width"], img["height"]) for img in data["images"]}
    assert (
        any(w > h for w, h in sizes)
        and any(w < h for w, h in sizes)
        and any(w == h for w, h in sizes)
    )
    cats = {c["name"] for c in data["categories"]}
    assert {"rectangle", "ellipse", "triangle", "star", "polygon", "ring"} <= cats
    assert len(list(out.sa1b_dir.glob("sa_*.json"))) == 8
    assert len(read_json(out.detections)) > 0
    lvis = read_json(out.lvis_annotations)
    assert all("coco_url" in img and "file_name" not in img for img in lvis["images"])
    assert not any("iscrowd" in a for a in lvis["annotations"])


def test_refuses_to_overwrite_unless_asked(tmp_path: Path) -> None:
    config = ShapesConfig(num_images=2, sizes=SMALL_SIZES, formats=("sa1b",), detections=False)
    make_shapes_dataset(tmp_path, config)
    with pytest.raises(FileExistsError, match="overwrite"):
        make_shapes_dataset(tmp_path, config)
    out = make_shapes_dataset(
        tmp_path, ShapesConfig(num_images=1, formats=("sa1b",)), overwrite=True
    )
    assert len(list(out.sa1b_dir.glob("sa_*.jpg"))) == 1  # the old, larger set is gone
    assert out.coco_annotations is None


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="formats"):
        ShapesConfig(formats=("voc",))
    with pytest.raises(ValueError, match="min_shapes"):
        ShapesConfig(min_shapes=5, max_shapes=2)
    with pytest.raises(ValueError, match="sizes"):
        ShapesConfig(sizes=((8, 8),))


def test_cli_writes_a_dataset_the_loaders_read(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    rc = make_shapes_main(
        ["--out-dir", str(tmp_path), "--num-images", "3", "--sizes", "100x80", "80x100"]
        + ["--seed", "4"]
    )
    assert rc == 0
    assert "wrote 3 images" in capsys.readouterr().out
    coco = CocoDataset(
        tmp_path / "coco/annotations/instances_shapes.json", tmp_path / "coco/val2017"
    )
    assert len(coco) == 3
    assert coco.load_image(coco.record(1)).shape == (100, 80, 3)
    assert len(SA1BDataset(tmp_path / "sa1b")) == 3
    assert make_shapes_main(["--out-dir", str(tmp_path), "--num-images", "1"]) == 2
    assert "already exists" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        make_shapes_main(["--out-dir", str(tmp_path), "--sizes", "100by80"])
    assert "WIDTHxHEIGHT" in capsys.readouterr().err


def test_token_sized_preset_follows_cocos_bins_in_tokens(tmp_path) -> None:
    config = token_sized_shapes_config(256, 8, num_images=60, seed=11)
    written = make_shapes_dataset(tmp_path / "tok", config)
    info = describe_shapes(written.coco_annotations, patch_size=8)
    assert info["instances"] > 250
    for name, share, *_ in TOKEN_BINS:  # 41 / 34 / 25% by count, measured on the visible masks
        assert abs(info["bin_shares"][name] - share) < 0.08, info
    assert 0.1 < info["object_share"] < 0.5  # objects are a minority of the image


def test_token_sized_preset_refuses_what_cannot_hold_its_bins() -> None:
    with pytest.raises(ValueError, match="at least 11 tokens across"):
        token_sized_shapes_config(64, 8, num_images=1, seed=0)
    with pytest.raises(ValueError, match="shares sum to 1"):
        ShapesConfig(extent_bins=((0.5, 8.0, 24.0),))
    with pytest.raises(ValueError, match="extent_bins must be"):
        ShapesConfig(extent_bins=((1.0, 24.0, 8.0),))


def test_make_shapes_cli_token_sized_preset(tmp_path, capsys) -> None:
    argv = ["--out-dir", str(tmp_path / "t"), "--preset", "token-sized", "--img-size", "128"]
    assert make_shapes_main(argv + ["--patch-size", "8", "--num-images", "4"]) == 0
    out = capsys.readouterr().out
    assert "sizes in tokens: small" in out and "wrote 4 images" in out
