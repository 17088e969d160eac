"""The proxy benchmark (issue 14): settings checked up front, splits, report rules, a miniature.

The miniature (``test_proxy_benchmark_miniature``) is the suite's fast end-to-end smoke test of the
whole distillation pipeline: data, teacher, cache, both phases, ablations, eval and the demo assets.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from biglittle_sam.build_sam import build_sam_from_config, model_config, sam_model_registry
from biglittle_sam.data.shapes import ShapesConfig, render_shapes_image
from experiments.proxy import ProxyBenchmarkSettings, bin_retention, check_proxy_targets
from experiments.proxy import cli as proxy_benchmark
from experiments.proxy import curve as proxy_curve
from experiments.proxy import make_proxy_split, object_share, proxy_table, relative_bin, split_seeds
from experiments.proxy.report import relative_bin_miou
from experiments.proxy.settings import geometry_summary


def test_geometries_tile_like_sam() -> None:
    small = geometry_summary(ProxyBenchmarkSettings(geometry="16").check())
    assert (small["grid"], small["windows"], small["edge_window"]) == (16, "3 x 3 of 7", 2)
    assert small["global_layers"] >= 2 and small["mask_logits"] == 64
    large = geometry_summary(ProxyBenchmarkSettings(geometry="32").check())
    assert (large["grid"], large["windows"], large["edge_window"]) == (32, "5 x 5 of 7", 4)
    assert large["mask_logits"] == 128


@pytest.mark.parametrize(
    "change, words",
    [
        ({"teacher_overrides": (("img_size", 130),)}, "does not tile"),
        ({"eval_ratios": (0.5, 1.5)}, "eval_ratios"),
        ({"keep_ratios": (0.0,)}, "keep_ratios"),
        ({"phase2_keep_ratios": ()}, "phase2_keep_ratios"),
        ({"geometry": "64"}, "geometry"),
        ({"split": "train"}, "split"),
        ({"device": "tpu"}, "device"),
        ({"split": "dev", "assets_dir": "assets"}, "test-split run only"),
        ({"student_little_dim": 8, "student_little_heads": 3}, "multiple of student_little_heads"),
        ({"student_little_mlp_ratio": 0.0}, "student_little_mlp_ratio"),
        ({"teacher_checkpoint": "teacher.pth"}, "given teacher is for choosing student recipes"),
        ({"split": "dev", "teacher_checkpoint": "missing.pth"}, "no such checkpoint file"),
    ],
)
def test_bad_settings_fail_before_any_stage(tmp_path: Path, change, words, capsys) -> None:
    with pytest.raises(ValueError, match=words):
        ProxyBenchmarkSettings(**change).check()
    argv = ["--out-dir", str(tmp_path / "out"), "--no-progress"]
    if "eval_ratios" in change:
        with pytest.raises(SystemExit) as stop:
            proxy_benchmark.main(argv + ["--eval-ratios", "0.5", "1.5"])
        assert stop.value.code == 2 and "eval_ratios" in capsys.readouterr().err
        assert not (tmp_path / "out").exists()  # nothing was written, nothing trained


def test_help_names_defaults(capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        proxy_benchmark.main(["--help"])
    text = capsys.readouterr().out
    assert stop.value.code == 0 and "--split {dev,test}" in text and "(default: test)" in text


def test_split_seeds_are_disjoint_and_recorded(tmp_path: Path) -> None:
    seeds = [set(split_seeds(s).values()) for s in range(5)]
    assert all(len(s) == 3 for s in seeds)
    assert not set.intersection(*seeds[:2]) and len(set.union(*seeds)) == 15
    split = make_proxy_split(tmp_path / "dev", 128, 3, split_seeds(0)["dev"])
    assert object_share(split)["seed"] == split_seeds(0)["dev"]


def test_proxy_images_are_mostly_background_with_every_size_bin(tmp_path: Path) -> None:
    stats = object_share(make_proxy_split(tmp_path / "train", 128, 24, 1))
    assert stats["object_share"] < 0.25 and stats["max_object_share"] < 0.5
    assert all(n > 0 for n in stats["bins"].values()), stats["bins"]


def test_shapes_default_keeps_its_backdrop() -> None:
    def largest(backdrop: bool) -> float:
        config = ShapesConfig(num_images=6, formats=("coco",), edge_cases=False, backdrop=backdrop)
        return sum(
            max(i["mask"].mean() for i in render_shapes_image(k, config)[1]) for k in range(6)
        )

    assert largest(True) > 2 * largest(False)  # the default keeps its large backdrop shape


def test_relative_bins_follow_coco_scaled_to_the_image() -> None:
    area = 640 * 480
    assert relative_bin(32**2, area) == "small" and relative_bin(32**2 + 1, area) == "medium"
    assert relative_bin(96**2, area) == "medium" and relative_bin(96**2 + 1, area) == "large"
    assert relative_bin(60, 128 * 128) == "medium"  # 60 / 16384 > 1 / 300
    with pytest.raises(ValueError, match="image_area"):
        relative_bin(1.0, 0.0)


def test_bin_retention_on_hand_made_ious() -> None:
    got = bin_retention([40.0, 90.0, 50.0], [80.0, 90.0, 100.0], ["small", "large", "small"])
    assert got == {"small": 0.5, "medium": None, "large": 1.0}
    with pytest.raises(ValueError, match="parallel"):
        bin_retention([1.0], [1.0, 2.0], ["small"])


def _rows(student_gain: float):
    teacher = [90.0, 80.0, 70.0, 60.0]
    random = [70.0, 60.0, 50.0, 40.0]
    learned = [x + student_gain + d for x, d in zip(random, (0.1, -0.1, 0.2, -0.2))]
    rows = [{"model": "teacher", "keep_ratio": None, "box": 88.0, "click1": 75.0,
             "click1_ious": teacher}]  # fmt: skip
    for r in (0.5, 0.25, 0.1):
        rows.append({"model": "student", "keep_ratio": r, "click1": sum(learned) / 4,
                     "click1_ious": learned})  # fmt: skip
        rows.append({"model": "random router", "keep_ratio": r, "click1": sum(random) / 4,
                     "click1_ious": random})  # fmt: skip
    return rows


def test_relative_bin_miou_on_hand_made_ious() -> None:
    ious = {"box": [80.0, 60.0, 40.0, float("nan")], "click1": [10.0, 20.0, 30.0, 40.0]}
    bins = ["small", "small", "large", "large"]
    by_bin = relative_bin_miou(ious, bins)
    assert by_bin["box"] == {"small": 70.0, "medium": None, "large": 40.0}  # NaN left out
    assert by_bin["click1"] == {"small": 15.0, "medium": None, "large": 35.0}
    with pytest.raises(ValueError, match="parallel"):
        relative_bin_miou({"box": [1.0]}, bins)


def test_targets_need_a_clear_gap_over_random_routing() -> None:
    clear = {t["target"]: t["met"] for t in check_proxy_targets(_rows(10.0))}
    assert clear["teacher box mIoU >= 85"] and clear["teacher click1 mIoU >= 75"]
    assert clear["learned router beats random routing at r=0.25 (> 2 paired SE)"]
    assert clear["learned router beats random routing at r=0.1 (> 2 paired SE and >= 3 points)"]
    close = {t["target"]: t["met"] for t in check_proxy_targets(_rows(2.0))}
    assert close["learned router beats random routing at r=0.25 (> 2 paired SE)"]
    assert not close["learned router beats random routing at r=0.1 (> 2 paired SE and >= 3 points)"]
    # 1-click retention: 65 / 75 = 86.7% < 90%
    assert not clear["student r=0.1 keeps >= 90% of teacher 1-click mIoU"]


@pytest.mark.slow  # ~55 s; the first proxy benchmark, superseded by v2 (tests/test_proxy_v2.py)
def test_proxy_benchmark_miniature(tmp_path: Path, one_thread, capsys) -> None:
    out = tmp_path / "proxy"
    argv = [
        "--out-dir", str(out), "--train-images", "4", "--distill-images", "6",
        "--eval-images", "3", "--teacher-steps", "2", "--teacher-batch-size", "2",
        "--student-steps", "1", "--phase2-steps", "1", "--routers-steps", "1",
        "--batch-size", "2", "--device", "cpu", "--processes", "1", "--no-progress",
        "--assets-dir", str(tmp_path / "assets"),
    ]  # fmt: skip
    result = proxy_benchmark.main(argv)
    assert result["geometry"]["grid"] == 16 and result["geometry"]["windows"] == "3 x 3 of 7"
    rows = {(r["model"], r["keep_ratio"]) for r in result["rows"]}
    assert {("student", r) for r in (1.0, 0.5, 0.25, 0.1)} <= rows
    for variant in ("random router", "training-free router (update norm)", "routers only"):
        assert {(variant, r) for r in (0.5, 0.25, 0.1)} <= rows
    assert set(result["bin_retention"]["student"]) == {"small", "medium", "large"}
    shares = result["capacity_share"]
    assert set(shares) == {"learned", "random", "gradient energy (training-free)"}
    assert all(0 < c["object_share"] < 1 for c in shares.values())
    saved = json.loads((out / "proxy_benchmark.json").read_text())
    assert saved["split"] == "test" and saved["data"]["seeds"] == split_seeds(0)
    assert saved["data"]["eval_split"]["seed"] == split_seeds(0)["test"]
    table = (out / "proxy_benchmark.md").read_text()
    assert "| student | 0.25 |" in table and "capacity on objects" in table
    assert "| student | 0.25 |" in capsys.readouterr().out
    with pytest.raises(ValueError, match="refusing .* 'dev' split"):
        proxy_table(dict(saved, split="dev"))
    # the demo's built-in models: fp16, loadable by the registry, described with the table
    assets = tmp_path / "assets"
    teacher = sam_model_registry["vit_tiny"](checkpoint=assets / "proxy_teacher.pth")
    student = sam_model_registry["bl_tiny"](checkpoint=assets / "proxy_student.pth")
    assert teacher.image_encoder.img_size == 128 and student.image_encoder.img_size == 128
    described = json.loads((assets / "proxy_models.json").read_text())
    assert described["student"]["registry"] == "bl_tiny"
    assert all(not isinstance(v, list) for row in described["rows"] for v in row.values())
    assert "| student | 0.25 |" in (assets / "proxy_models.md").read_text()
    # The teacher's kept checkpoints (2 steps: one each) give its mIoU against training minutes.
    curve = proxy_curve.main([str(out), "--split", "test"])
    assert [r["step"] for r in curve] == [1, 2] and all(r["minutes"] >= 0 for r in curve)
    assert set(curve[0]["box_by_bin"]) == {"small", "medium", "large"}
    assert "| steps | training minutes |" in capsys.readouterr().out
    # --resume reuses every trained stage and says which run trained them, and how long it took
    again = proxy_benchmark.main(argv + ["--resume"])
    assert again["trained_in"]["wall_s"] == saved["wall_s"]
    assert again["trained_in"]["command"] == saved["command"]
    assert again["rows"] == result["rows"]
    assert "This run resumed a finished one" in (out / "proxy_benchmark.md").read_text()
    assert "Student: bl_tiny, E-blocks 16 wide (2 heads, MLP ratio 4)." in table
    # bl_b_lite's analogue against the same teacher: the trained teacher and its cache are copied
    # into another folder, --resume reuses them, and only the students train
    lite = tmp_path / "proxy_lite"
    for part in ("data", "teacher", "cache"):
        shutil.copytree(out / part, lite / part)
    assert argv[:2] == ["--out-dir", str(out)] and argv[-2] == "--assets-dir"
    lite_argv = ["--out-dir", str(lite)] + argv[2:-2] + ["--resume"]  # no assets from this run
    lite_argv += ["--student-little-dim", "8", "--student-little-heads", "1"]
    lite_result = proxy_benchmark.main(lite_argv + ["--student-little-mlp-ratio", "2"])
    teacher_row, lite_teacher_row = result["rows"][0], lite_result["rows"][0]
    for key in ("box", "click1", "click3", "gmacs"):  # the same teacher, evaluated the same
        assert lite_teacher_row[key] == teacher_row[key]
    student = torch.load(lite / "phase2" / "model.pth", map_location="cpu", weights_only=True)
    config = student["config"]
    assert (config["little_dim"], config["little_heads"], config["little_mlp_ratio"]) == (8, 1, 2)
    assert "E-blocks 8 wide (1 heads, MLP ratio 2)" in (lite / "proxy_benchmark.md").read_text()
    # A student recipe on dev against a given teacher (the fp16 built-in one): no teacher training,
    # the teacher is written in fp32 and scores as the trained one did
    given = tmp_path / "proxy_given"
    given_argv = ["--out-dir", str(given)] + argv[2:-2] + ["--split", "dev"]
    given_argv += ["--teacher-checkpoint", str(assets / "proxy_teacher.pth")]
    given_result = proxy_benchmark.main(given_argv)
    adopted = torch.load(given / "teacher" / "model.pth", map_location="cpu", weights_only=True)
    assert adopted["adopted_from"] == str(assets / "proxy_teacher.pth")
    assert all(v.dtype == torch.float32 for v in adopted["model"].values() if v.is_floating_point())
    assert not (given / "teacher" / "checkpoints").exists()  # nothing trained
    assert given_result["split"] == "dev" and given_result["outputs"]["markdown"] is None
    assert {("student", 0.1), ("random router", 0.1)} <= {
        (r["model"], r["keep_ratio"]) for r in given_result["rows"]
    }


def test_a_given_teacher_must_be_a_plain_sam_of_the_geometry(tmp_path: Path) -> None:
    from biglittle_sam.checkpoint import CheckpointError, save_model_checkpoint
    from experiments.stages import read_teacher

    config = ProxyBenchmarkSettings().check()
    sam = build_sam_from_config(config)
    good = save_model_checkpoint(tmp_path / "teacher.pth", sam, config)
    payload = read_teacher(good, config)
    assert payload["adopted_from"] == str(good) and payload["config"]["img_size"] == 128
    bare = tmp_path / "bare.pth"
    torch.save(sam.state_dict(), bare)
    with pytest.raises(CheckpointError, match="no stored config"):
        read_teacher(bare, config)
    other = ProxyBenchmarkSettings(geometry="32").check()
    with pytest.raises(CheckpointError, match=r"img_size 128 \(expected 256\)"):
        read_teacher(good, other)
    student = sam_model_registry["bl_tiny"]()
    bl = save_model_checkpoint(tmp_path / "student.pth", student, model_config(student))
    with pytest.raises(CheckpointError, match="a big.LITTLE model"):
        read_teacher(bl, config)


def test_step_costs_are_measured_at_the_geometry() -> None:
    from experiments.proxy.budget import measure_costs

    costs = measure_costs(ProxyBenchmarkSettings().check(), batch_size=2, repeats=1)
    assert set(costs) == {"encoder_fwd_bwd_ms_per_image", "decoder_fwd_bwd_ms_per_prompt"}
    assert all(v > 0 for v in costs.values())
    with pytest.raises(ValueError, match="batch_size"):
        measure_costs(ProxyBenchmarkSettings().check(), batch_size=0)


def test_prepare_image_pads_like_the_predictor() -> None:
    from experiments.proxy.heatmap import prepare_image

    image = np.full((48, 64, 3), 100, dtype=np.uint8)  # H x W: resized to 96 x 128
    objects = np.zeros((48, 64), dtype=bool)
    objects[:12, :16] = True
    mean, std = torch.full((3, 1, 1), 100.0), torch.full((3, 1, 1), 2.0)
    x, m, valid = prepare_image(image, objects, 128, mean, std)
    assert x.shape == (1, 3, 128, 128) and m.shape == valid.shape == (1, 128, 128)
    assert valid[0, :96].all() and not valid[0, 96:].any()
    assert float(x.abs().max()) < 1e-4  # normalized to 0, padding 0
    assert float(m.sum()) == 24 * 32 and m[0, :24, :32].all()
