"""SA-1B loader: reading the generator's output, seeded per-image sampling, bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from biglittle_sam.data import DatasetError, ImageProblemError, SA1BDataset, read_image_list
from tests.eval_helpers import read_json, write_json


def test_reads_generated_sa1b_folder(eval_shapes) -> None:
    ds = SA1BDataset(eval_shapes.sa1b_dir)
    assert len(ds) == 5
    coco = read_json(eval_shapes.coco_annotations)
    coco_masks = {a["id"]: a for a in coco["annotations"] if not a["iscrowd"]}
    for i in range(len(ds)):
        record = ds.record(i)
        assert record.image_id == i + 1 and record.path.name == f"sa_{i + 1}.jpg"
        image = ds.load_image(record)
        assert image.shape == (record.height, record.width, 3)
        for inst in record.instances:
            mask = inst.mask()
            assert mask.shape == image.shape[:2]
            assert mask.sum() == inst.area == coco_masks[inst.ann_id]["area"]
            assert inst.iscrowd == 0


def test_instances_are_sampled_per_image_with_a_seed(eval_shapes) -> None:
    full = SA1BDataset(eval_shapes.sa1b_dir)
    a = SA1BDataset(eval_shapes.sa1b_dir, instances_per_image=2, seed=7)
    b = SA1BDataset(eval_shapes.sa1b_dir, instances_per_image=2, seed=7)
    c = SA1BDataset(eval_shapes.sa1b_dir, instances_per_image=2, seed=8)
    differs = False
    for i in range(len(full)):
        all_ids = [x.ann_id for x in full.record(i).instances]
        ids_a = [x.ann_id for x in a.record(i).instances]
        assert ids_a == [x.ann_id for x in b.record(i).instances]  # same seed, same sample
        assert len(ids_a) == min(2, len(all_ids)) and len(set(ids_a)) == len(ids_a)
        assert ids_a == [x for x in all_ids if x in ids_a]  # kept in file order
        if len(all_ids) > 2:
            assert a.record(i).skipped["not_sampled"] == len(all_ids) - 2
        differs |= ids_a != [x.ann_id for x in c.record(i).instances]
    assert differs
    # The sample of an image does not depend on which other images are in the set.
    one = SA1BDataset(eval_shapes.sa1b_dir, instances_per_image=2, seed=7, limit=1)
    assert [x.ann_id for x in one.record(0).instances] == [x.ann_id for x in a.record(0).instances]


def test_image_list_selects_a_held_out_set(eval_shapes, tmp_path: Path) -> None:
    lst = tmp_path / "held_out.txt"
    lst.write_text("# held-out images\nsa_4.jpg\n2\n\nsa_5\n", encoding="utf-8")
    assert read_image_list(lst) == ["sa_4", "sa_2", "sa_5"]
    ds = SA1BDataset(eval_shapes.sa1b_dir, image_list=lst)
    assert [ds.record(i).image_id for i in range(len(ds))] == [2, 4, 5]
    lst.write_text("sa_4\nsa_99\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="sa_99.json"):
        SA1BDataset(eval_shapes.sa1b_dir, image_list=lst)
    lst.write_text("image_4.png\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="line 1: expected an SA-1B image name"):
        read_image_list(lst)


def _copy(eval_shapes, tmp_path: Path) -> Path:
    root = tmp_path / "sa1b"
    shutil.copytree(eval_shapes.sa1b_dir, root)
    return root


def test_malformed_json_names_the_file(eval_shapes, tmp_path: Path) -> None:
    root = _copy(eval_shapes, tmp_path)
    data = read_json(root / "sa_2.json")
    data["annotations"][0]["segmentation"] = [[1, 2, 3, 4, 5, 6]]
    data["annotations"][1].pop("bbox")
    write_json(root / "sa_2.json", data)
    ds = SA1BDataset(root)
    ds.record(0)
    with pytest.raises(
        DatasetError, match=r"sa_2.json: malformed SA-1B .*annotations\[0\]"
    ) as info:
        ds.record(1)
    assert "annotations[1]: 'bbox'" in str(info.value)
    (root / "sa_3.json").write_text("{", encoding="utf-8")
    with pytest.raises(DatasetError, match="sa_3.json: not valid JSON"):
        ds.record(2)
    write_json(root / "sa_4.json", {"image": {}, "annotations": "none"})
    with pytest.raises(DatasetError, match="sa_4.json: expected {'image'"):
        ds.record(3)


def test_missing_image_and_size_mismatch(eval_shapes, tmp_path: Path) -> None:
    root = _copy(eval_shapes, tmp_path)
    (root / "sa_1.jpg").unlink()
    data = read_json(root / "sa_3.json")
    data["image"]["height"] += 2
    write_json(root / "sa_3.json", data)
    ds = SA1BDataset(root)
    with pytest.raises(ImageProblemError) as info:
        ds.load_image(ds.record(0))
    assert info.value.problem.reason == "missing"
    with pytest.raises(ImageProblemError) as info:
        ds.load_image(ds.record(2))
    assert info.value.problem.reason == "size_mismatch"
    assert ds.load_image(ds.record(1)).dtype == np.uint8


def test_empty_or_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="SA-1B folder not found"):
        SA1BDataset(tmp_path / "nope")
    with pytest.raises(DatasetError, match=r"no SA-1B annotation files \(sa_<id>.json\)"):
        SA1BDataset(tmp_path)


def test_unusable_boxes_are_skipped_before_sampling_and_names_stay_in_the_folder(
    eval_shapes, tmp_path: Path
) -> None:
    root = _copy(eval_shapes, tmp_path)
    data = read_json(root / "sa_1.json")
    n = len(data["annotations"])
    w = data["image"]["width"]
    data["annotations"][0]["bbox"] = [1.0, float("inf"), 3.0, 3.0]
    data["annotations"][1]["bbox"] = [-2.0 * w, 0.0, 3.0 * w, 5.0]  # clipped to the image
    write_json(root / "sa_1.json", data)
    ds = SA1BDataset(root, instances_per_image=n - 1, seed=0)
    record = ds.record(0)
    assert record.skipped == {"bbox_not_finite": 1}  # the sample is drawn from usable ones only
    assert len(record.instances) == n - 1
    assert [(i["reason"], i["action"]) for i in record.issues] == [
        ("bbox_not_finite", "skipped"),
        ("bbox_off_image", "clipped"),
    ]
    clipped = next(i for i in record.instances if i.ann_id == data["annotations"][1]["id"])
    assert clipped.bbox == (0.0, 0.0, float(w), 5.0)
    data = read_json(root / "sa_2.json")
    data["image"]["file_name"] = ".."
    write_json(root / "sa_2.json", data)
    with pytest.raises(ImageProblemError) as info:
        ds.load_image(ds.record(1))
    assert info.value.problem.reason == "outside_images"
