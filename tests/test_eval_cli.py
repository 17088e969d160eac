"""biglittle-sam-eval end to end with real tiny models: outputs, fidelity, bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.eval_helpers import copy_coco, damage_boxes, read_json, write_json
from tools.eval_miou import main


def _coco_args(eval_shapes, out: Path) -> list:
    return [
        "--annotations",
        str(eval_shapes.coco_annotations),
        "--images",
        str(eval_shapes.coco_images),
        "--device",
        "cpu",
        "--out-dir",
        str(out),
        "--no-progress",
    ]


def test_cli_writes_json_markdown_and_png(
    eval_shapes, tiny_sam_checkpoint: Path, tmp_path: Path, one_thread, capsys
) -> None:
    rc = main(
        _coco_args(eval_shapes, tmp_path)
        + ["--model", f"vit_tiny={tiny_sam_checkpoint}"]
        + ["--model", f"bl_tiny={tiny_sam_checkpoint}@0.5"]
        + ["--model", "bl_tiny@0.25", "--clicks", "1", "3", "--name", "run"]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| model | keep ratio | GMACs | encoder ms | box | 1 click | 3 clicks |" in printed
    result = read_json(tmp_path / "run.json")
    assert result["task"] == "miou" and result["settings"]["prompt"]["protocol"] == "evit"
    assert result["settings"]["prompt"]["mask_choice"] == "best"
    assert [m["label"] for m in result["models"]] == ["vit_tiny", "bl_tiny@0.5", "bl_tiny@0.25"]
    n = result["dataset"]["instances"]
    assert n == len(result["instances"]["ann_id"]) > 10
    for m in result["models"]:
        assert m["encoder_ms"]["mean"] > 0 and m["gmacs"] > 0
        for name in ("box", "click1", "click3"):
            ious = result["ious"][m["label"]][name]
            assert len(ious) == n and all(0.0 <= v <= 100.0 for v in ious)
            assert m["miou"][name]["all"] == pytest.approx(sum(ious) / n)
    md = (tmp_path / "run.md").read_text(encoding="utf-8")
    assert "protocol `evit`" in md and "bl_tiny@0.25" in md and "small / medium / large" in md
    assert (tmp_path / "run.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_edgesam_protocol_and_gmacs_plot(eval_shapes, tmp_path: Path, one_thread) -> None:
    args = _coco_args(eval_shapes, tmp_path) + ["--model", "vit_tiny", "--protocol", "edgesam"]
    assert (
        main(args + ["--prompt", "click", "--clicks", "2", "--plot-x", "gmacs", "--limit", "2"])
        == 0
    )
    result = read_json(tmp_path / "miou_coco.json")
    assert result["settings"]["prompt"]["mask_choice"] == "single"
    assert result["dataset"]["include_crowd"] is False
    assert result["dataset"]["skipped_annotations"].get("crowd", 0) >= 1
    assert result["dataset"]["images_evaluated"] == 2
    assert set(result["ious"]["vit_tiny"]) == {"click2"}
    assert all(c == 0 for c in result["instances"]["iscrowd"])
    assert Path(result["outputs"]["plot"]).is_file()


def test_missing_images_are_listed_or_stop_the_run_with_strict(
    eval_shapes, tmp_path: Path, one_thread, capsys
) -> None:
    ann, images = copy_coco(eval_shapes, tmp_path / "data")
    files = sorted(images.iterdir())
    files[1].unlink()
    files[3].write_bytes(b"garbage")
    base = ["--annotations", str(ann), "--images", str(images), "--model", "vit_tiny"]
    base += ["--prompt", "box", "--device", "cpu", "--no-progress", "--out-dir", str(tmp_path)]
    assert main(base) == 0
    result = read_json(tmp_path / "miou_coco.json")
    skipped = result["dataset"]["skipped_images"]
    assert [(s["file"].split("/")[-1], s["reason"]) for s in skipped] == [
        (files[1].name, "missing"),
        (files[3].name, "corrupt"),
    ]
    assert result["dataset"]["images_evaluated"] == 3
    assert "2 images skipped (corrupt: 1, missing: 1)" in (tmp_path / "miou_coco.md").read_text()
    capsys.readouterr()
    assert main(base + ["--strict"]) == 1
    err = capsys.readouterr().err
    assert files[1].name in err and "missing" in err and "--strict" in err
    assert "Traceback" not in err


def test_malformed_annotations_and_bad_flags(eval_shapes, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [], "annotations": {}}', encoding="utf-8")
    args = [
        "--annotations",
        str(bad),
        "--images",
        str(eval_shapes.coco_images),
        "--model",
        "vit_tiny",
    ]
    assert main(args + ["--device", "cpu", "--out-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert str(bad) in err and "'annotations' is dict" in err and "Traceback" not in err
    for spec, message in (("bl_b=", "NAME[=CHECKPOINT][@KEEP_RATIO]"), ("bl_tiny@7", "(0, 1]")):
        with pytest.raises(SystemExit) as info:
            main(["--images", str(eval_shapes.coco_images), "--model", spec])
        assert info.value.code == 2
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--images", str(eval_shapes.coco_images)])
    assert "at least one --model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--images", str(tmp_path), "--model", "vit_tiny"])
    assert "cannot tell which dataset" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(_coco_args(eval_shapes, tmp_path) + ["--model", "vit_tiny", "--task", "ap"])
    assert "needs --detections" in capsys.readouterr().err


def test_fidelity_of_an_inherited_student_at_keep_ratio_1(
    eval_shapes, tiny_sam_checkpoint: Path, tmp_path: Path, one_thread
) -> None:
    teacher = f"vit_tiny={tiny_sam_checkpoint}"
    args = ["--images", str(eval_shapes.coco_images), "--teacher", teacher]
    args += [
        "--model",
        f"bl_tiny={tiny_sam_checkpoint}@1",
        "--model",
        f"bl_tiny={tiny_sam_checkpoint}@0.25",
    ]
    args += ["--device", "cpu", "--no-progress", "--out-dir", str(tmp_path), "--limit", "3"]
    assert main(args) == 0
    result = read_json(tmp_path / "fidelity_folder.json")
    exact, routed = result["models"]
    # A big.LITTLE model that inherits from SAM computes SAM's embedding at keep ratio 1.
    assert exact["fidelity"]["mse"] < 1e-10 and exact["fidelity"]["cosine"] > 0.99999
    assert routed["fidelity"]["cosine"] < exact["fidelity"]["cosine"]
    assert len(result["per_image"][routed["label"]]["mse"]) == 3
    assert (
        "Embedding fidelity against `teacher vit_tiny`"
        in (tmp_path / "fidelity_folder.md").read_text()
    )


def test_int8_fidelity_against_the_same_weights_in_fp32_and_int8_miou(
    eval_shapes, tiny_sam_checkpoint: Path, tmp_path: Path, one_thread, capsys
) -> None:
    spec = f"bl_tiny={tiny_sam_checkpoint}@0.5"
    args = ["--images", str(eval_shapes.coco_images), "--teacher", spec, "--model", spec]
    args += ["--int8", "--device", "cpu", "--no-progress", "--out-dir", str(tmp_path)]
    assert main(args + ["--limit", "3"]) == 0
    (model,) = read_json(tmp_path / "fidelity_folder.json")["models"]
    assert model["label"].endswith(" int8")
    # int8 changes the embedding a little, never much (the same weights, fp32 as the reference)
    assert 1e-12 < model["fidelity"]["mse"] and model["fidelity"]["cosine"] > 0.99
    # mIoU of an int8 model: the same protocol, its rows labelled int8
    miou = _coco_args(eval_shapes, tmp_path) + ["--model", spec, "--int8", "--clicks", "1"]
    assert main(miou + ["--limit", "2", "--name", "int8"]) == 0
    rows = read_json(tmp_path / "int8.json")["models"]
    assert [r["label"] for r in rows] == ["bl_tiny@0.5 int8"]
    # int8 is CPU-only: a CUDA device is refused before anything is built
    with pytest.raises(SystemExit) as stop:
        main(miou + ["--device", "cuda"])  # the last --device wins
    assert stop.value.code == 2 and "--int8 runs on the CPU only" in capsys.readouterr().err


def test_unusable_annotations_are_listed_and_leave_valid_scores_unchanged(
    eval_shapes, tmp_path: Path, one_thread, capsys
) -> None:

    ann, images = copy_coco(eval_shapes, tmp_path / "data")
    base = ["--images", str(images), "--model", "vit_tiny", "--prompt", "box"]
    base += ["--device", "cpu", "--no-progress", "--out-dir", str(tmp_path)]
    assert main(base + ["--annotations", str(ann), "--name", "clean"]) == 0
    data = read_json(ann)
    damaged = damage_boxes(data)
    last = data["images"][-1]
    shutil.copyfile(images / last["file_name"], tmp_path / "data" / "outside.jpg")
    last["file_name"] = "../outside.jpg"
    write_json(tmp_path / "damaged.json", data)
    with pytest.warns(UserWarning, match=r"6 unusable annotations: 1 clipped \(bbox_off_image\)"):
        assert main(base + ["--annotations", str(tmp_path / "damaged.json"), "--name", "bad"]) == 0
    clean, bad = read_json(tmp_path / "clean.json"), read_json(tmp_path / "bad.json")
    ds = bad["dataset"]
    assert {i["ann_id"]: i["reason"] for i in ds["annotation_issues"]} == damaged
    assert ds["boxes_clipped"] == 1
    assert ds["skipped_annotations"] == {
        "bbox_not_finite": 1,
        "bbox_outside_image": 1,
        "empty_polygon": 3,
    }
    assert [(p["reason"], p["image_id"]) for p in ds["skipped_images"]] == [
        ("outside_images", last["id"])
    ]
    # Every annotation left untouched scores exactly what it scores in the clean file.
    before = dict(zip(clean["instances"]["ann_id"], clean["ious"]["vit_tiny"]["box"]))
    after = dict(zip(bad["instances"]["ann_id"], bad["ious"]["vit_tiny"]["box"]))
    untouched = [a for a in after if a not in damaged]
    assert len(untouched) == len(after) - 1 > 5
    assert all(after[a] == before[a] for a in untouched)
    assert all(v == v for v in after.values())  # no NaN IoU
    md = (tmp_path / "bad.md").read_text(encoding="utf-8")
    assert "1 boxes clipped to their image" in md and "empty_polygon: 3" in md
    assert "outside_images: 1" in md
