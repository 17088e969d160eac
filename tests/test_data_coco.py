"""COCO and LVIS loaders: reading the generator's output, filtering rules, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from biglittle_sam.data import (
    CocoDataset,
    DatasetError,
    ImageProblemError,
    LvisDataset,
    load_annotation_json,
)
from biglittle_sam.data.shapes import ShapesConfig, render_shapes_image
from tests.eval_helpers import SMALL_SIZES, copy_coco, damage_boxes, read_json, write_json


def test_reads_generated_coco_with_exact_masks(eval_shapes) -> None:
    ds = CocoDataset(eval_shapes.coco_annotations, eval_shapes.coco_images)
    assert len(ds) == 5
    config = ShapesConfig(num_images=5, sizes=SMALL_SIZES, seed=3)
    kinds = set()
    for i in range(len(ds)):
        record = ds.record(i)
        image = ds.load_image(record)
        assert image.shape == (record.height, record.width, 3) and image.dtype == np.uint8
        _, rendered = render_shapes_image(i, config)
        assert [inst.iscrowd for inst in record.instances] == [int(r["crowd"]) for r in rendered]
        for inst, ref in zip(record.instances, rendered):
            np.testing.assert_array_equal(inst.mask(), ref["mask"])
            kinds.add(type(inst.segmentation).__name__ + str(inst.iscrowd))
    assert {"list0", "dict0", "dict1"} <= kinds  # polygons, RLE and crowd RLE


def test_crowd_and_small_annotations_are_skipped_and_counted(eval_shapes, tmp_path: Path) -> None:
    data = read_json(eval_shapes.coco_annotations)
    n_crowd = sum(a["iscrowd"] for a in data["annotations"])
    assert n_crowd > 0
    data["annotations"][0]["area"] = 0.5
    path = write_json(tmp_path / "instances.json", data)
    with_crowd = CocoDataset(path, eval_shapes.coco_images)
    without = CocoDataset(path, eval_shapes.coco_images, include_crowd=False)
    skipped_with = _total(with_crowd)
    skipped_without = _total(without)
    assert skipped_with == {"area<1": 1}
    assert skipped_without == {
        "area<1": 1,
        "crowd": n_crowd - int(data["annotations"][0]["iscrowd"]),
    }
    kept = sum(len(with_crowd.record(i).instances) for i in range(len(with_crowd)))
    assert kept == len(data["annotations"]) - 1


def _total(ds: CocoDataset) -> dict:
    out: dict = {}
    for i in range(len(ds)):
        for k, v in ds.record(i).skipped.items():
            out[k] = out.get(k, 0) + v
    return out


def test_limit_and_image_order(eval_shapes) -> None:
    ds = CocoDataset(eval_shapes.coco_annotations, eval_shapes.coco_images, limit=2)
    assert ds.image_ids == [1, 2]
    assert (
        len(
            CocoDataset(
                eval_shapes.coco_annotations, eval_shapes.coco_images, require_instances=False
            )
        )
        == 5
    )


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: d.pop("annotations"), "'annotations' is missing"),
        (
            lambda d: d["annotations"][1].update(bbox=[1, 2, 3]),
            r"annotations\[1\] \(id 2\): 'bbox'",
        ),
        (
            lambda d: d["annotations"][2].update(segmentation=[[1, 2, 3]]),
            "odd number of coordinates",
        ),
        (lambda d: d["annotations"][2].update(segmentation={"counts": "x"}), "RLE 'size'"),
        (lambda d: d["annotations"][0].update(image_id=999), "not an image listed"),
        (lambda d: d["images"][0].pop("width"), r"images\[0\] \(id 1\): 'width'"),
        (lambda d: d["annotations"][3].update(iscrowd=2), "'iscrowd' must be 0 or 1"),
        (
            lambda d: d["annotations"][3].update(segmentation={"size": [2, 2], "counts": [1, 2]}),
            "add up to 3 pixels",
        ),
    ],
)
def test_malformed_annotation_file_names_file_and_problem(
    eval_shapes, tmp_path: Path, damage, message: str
) -> None:
    data = read_json(eval_shapes.coco_annotations)
    damage(data)
    path = write_json(tmp_path / "bad.json", data)
    with pytest.raises(DatasetError, match=message) as info:
        CocoDataset(path, eval_shapes.coco_images)
    assert str(path) in str(info.value)


def test_not_json_or_not_an_object(tmp_path: Path, eval_shapes) -> None:
    bad = tmp_path / "broken.json"
    bad.write_text('{"images": [', encoding="utf-8")
    with pytest.raises(DatasetError, match=r"broken.json: not valid JSON .* line 1"):
        load_annotation_json(bad)
    bad.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(DatasetError, match="expected a JSON object with 'images'"):
        load_annotation_json(bad)
    with pytest.raises(DatasetError, match="not found"):
        load_annotation_json(tmp_path / "nope.json")
    with pytest.raises(DatasetError, match="image folder not found"):
        CocoDataset(eval_shapes.coco_annotations, tmp_path / "no_images")


def test_undecodable_rle_is_a_clear_error(eval_shapes, tmp_path: Path) -> None:
    data = read_json(eval_shapes.coco_annotations)
    ann = next(a for a in data["annotations"] if isinstance(a["segmentation"], dict))
    h, w = ann["segmentation"]["size"]
    too_long = mask_utils.frPyObjects({"size": [h, w], "counts": [h * w + 5]}, h, w)
    ann["segmentation"] = {"size": [h, w], "counts": too_long["counts"].decode("ascii")}
    path = write_json(tmp_path / "rle.json", data)
    ds = CocoDataset(path, eval_shapes.coco_images)
    record = next(ds.record(i) for i in range(len(ds)) if ds.record(i).image_id == ann["image_id"])
    inst = next(x for x in record.instances if x.ann_id == ann["id"])
    with pytest.raises(DatasetError, match=f"rle.json: annotation id {ann['id']}"):
        inst.mask()


def test_missing_corrupt_and_mismatched_images(eval_shapes, tmp_path: Path) -> None:
    ann, images = copy_coco(eval_shapes, tmp_path)
    files = sorted(images.iterdir())
    files[0].unlink()
    files[1].write_bytes(b"not a jpeg at all")
    files[2].write_bytes(files[2].read_bytes()[:200])  # truncated
    data = read_json(ann)
    data["images"][3]["width"] += 1  # the file no longer matches
    write_json(ann, data)
    ds = CocoDataset(ann, images)
    reasons = []
    for i in range(4):
        with pytest.raises(ImageProblemError) as info:
            ds.load_image(ds.record(i))
        reasons.append(info.value.problem.reason)
        assert info.value.problem.file.endswith(ds.record(i).file_name)
    assert reasons == ["missing", "corrupt", "corrupt", "size_mismatch"]
    ds.load_image(ds.record(4))


def test_rle_of_the_wrong_size_is_a_size_mismatch(eval_shapes, tmp_path: Path) -> None:
    ann, images = copy_coco(eval_shapes, tmp_path)
    data = read_json(ann)
    target = next(
        a for a in data["annotations"] if isinstance(a["segmentation"], dict) and not a["iscrowd"]
    )
    h, w = target["segmentation"]["size"]
    target["segmentation"] = {"size": [h + 1, w], "counts": [(h + 1) * w]}
    write_json(ann, data)
    ds = CocoDataset(ann, images)
    index = ds.image_ids.index(target["image_id"])
    with pytest.raises(
        ImageProblemError, match=f"annotation {target['id']} has a segmentation of size"
    ):
        ds.load_image(ds.record(index))


def test_lvis_images_are_found_through_coco_url(eval_shapes, tmp_path: Path) -> None:
    ds = LvisDataset(eval_shapes.lvis_annotations, eval_shapes.lvis_image_root)
    assert len(ds) == 5
    coco = CocoDataset(eval_shapes.coco_annotations, eval_shapes.coco_images, include_crowd=False)
    for i in range(len(ds)):
        record = ds.record(i)
        assert record.path.parent.name == "val2017"
        image = ds.load_image(record)
        ref = coco.record(i)
        assert [x.ann_id for x in record.instances] == [x.ann_id for x in ref.instances]
        assert image.shape[:2] == (ref.height, ref.width)
    # The split folder itself also works as the root.
    flat = LvisDataset(eval_shapes.lvis_annotations, eval_shapes.coco_images)
    assert flat.load_image(flat.record(0)).shape[2] == 3
    data = read_json(eval_shapes.lvis_annotations)
    data["images"][0].pop("coco_url")
    bad = write_json(tmp_path / "lvis.json", data)
    with pytest.raises(DatasetError, match="needs 'coco_url'"):
        LvisDataset(bad, eval_shapes.lvis_image_root)


def test_missing_lvis_split_folder_reports_the_expected_path(eval_shapes, tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(eval_shapes.coco_images, root / "train2017")
    ds = LvisDataset(eval_shapes.lvis_annotations, root)  # coco_url says val2017
    with pytest.raises(ImageProblemError, match="val2017") as info:
        ds.load_image(ds.record(0))
    assert info.value.problem.reason == "missing"
    json.dumps(info.value.problem.as_dict())


def test_unusable_boxes_and_empty_polygons_are_skipped_or_clipped_and_listed(
    eval_shapes, tmp_path: Path
) -> None:
    data = read_json(eval_shapes.coco_annotations)
    clean = CocoDataset(eval_shapes.coco_annotations, eval_shapes.coco_images).record(0)
    damaged = damage_boxes(data)
    path = write_json(tmp_path / "instances.json", data)  # NaN is written as JSON's NaN
    record = CocoDataset(path, eval_shapes.coco_images).record(0)
    assert record.image_id == 1
    by_id = {inst.ann_id: inst for inst in record.instances}
    issues = {issue["ann_id"]: issue for issue in record.issues}
    assert {k: v["reason"] for k, v in issues.items()} == damaged
    assert all(v["image_id"] == 1 and v["detail"] for v in issues.values())
    clipped = [k for k, v in issues.items() if v["action"] == "clipped"]
    assert clipped == [k for k, r in damaged.items() if r == "bbox_off_image"]
    assert set(by_id) == {i.ann_id for i in clean.instances} - (set(damaged) - set(clipped))
    x, y, bw, bh = by_id[clipped[0]].bbox
    assert x == 0.0 and x + bw == record.width and np.isfinite([x, y, bw, bh]).all()
    assert record.skipped == {"bbox_not_finite": 1, "bbox_outside_image": 1, "empty_polygon": 3}
    # Untouched annotations keep their boxes exactly, including a border box within tolerance.
    for inst in clean.instances:
        if inst.ann_id in by_id and inst.ann_id not in damaged:
            assert by_id[inst.ann_id].bbox == inst.bbox


def test_box_within_a_pixel_of_the_border_is_kept_as_it_is(eval_shapes, tmp_path: Path) -> None:
    data = read_json(eval_shapes.coco_annotations)
    img = data["images"][0]
    ann = next(a for a in data["annotations"] if a["image_id"] == img["id"])
    ann["bbox"] = [-0.5, 0.0, img["width"] + 1.0, 4.0]
    path = write_json(tmp_path / "instances.json", data)
    record = CocoDataset(path, eval_shapes.coco_images).record(0)
    inst = next(i for i in record.instances if i.ann_id == ann["id"])
    assert inst.bbox == (-0.5, 0.0, img["width"] + 1.0, 4.0) and record.issues == []


def test_file_names_outside_the_image_folder_are_never_opened(eval_shapes, tmp_path: Path) -> None:
    ann, images = copy_coco(eval_shapes, tmp_path / "data")
    data = read_json(ann)
    first = data["images"][0]["file_name"]
    shutil.copyfile(images / first, tmp_path / "data" / "outside.jpg")  # a real, readable image
    data["images"][0]["file_name"] = "../outside.jpg"
    data["images"][1]["file_name"] = str(tmp_path / "data" / "outside.jpg")
    data["images"][2]["file_name"] = "/etc/passwd"
    data["images"][3]["file_name"] = "sub/../" + data["images"][3]["file_name"]  # stays inside
    write_json(ann, data)
    ds = CocoDataset(ann, images)
    for i in range(3):
        with pytest.raises(ImageProblemError, match="outside the image folder") as info:
            ds.load_image(ds.record(i))
        assert info.value.problem.reason == "outside_images"
        json.dumps(info.value.problem.as_dict())
    assert ds.load_image(ds.record(3)).dtype == np.uint8


def test_lvis_coco_url_cannot_leave_the_image_root(eval_shapes, tmp_path: Path) -> None:
    root = tmp_path / "coco"
    shutil.copytree(eval_shapes.coco_images, root / "val2017")
    data = read_json(eval_shapes.lvis_annotations)
    name = data["images"][0]["coco_url"].rsplit("/", 1)[-1]
    shutil.copyfile(root / "val2017" / name, tmp_path / name)
    data["images"][0]["coco_url"] = f"http://images.cocodataset.org/../{name}"
    path = write_json(tmp_path / "lvis.json", data)
    ds = LvisDataset(path, root)
    with pytest.raises(ImageProblemError) as info:
        ds.load_image(ds.record(0))
    assert info.value.problem.reason == "outside_images"
    assert ds.load_image(ds.record(1)).dtype == np.uint8
