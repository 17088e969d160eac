"""The second proxy benchmark (issue 31): settings refused before any stage, dense students matched
within 5%, a timm student evaluated through the registry, and a miniature run end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor

from biglittle_sam.build_sam import build_model_from_spec, sam_model_registry
from biglittle_sam.flops import encoder_macs
from biglittle_sam.model_spec import parse_model_spec
from biglittle_sam.modeling.encoder_ops import model_config

pytest.importorskip("timm")

from experiments.proxy import curve as proxy_curve  # noqa: E402
from experiments.proxy2 import ProxyV2Settings, cli, dense_matches  # noqa: E402
from experiments.proxy2 import seeds as proxy_seeds  # noqa: E402
from experiments.proxy2.report import markdown  # noqa: E402
from experiments.proxy.settings import geometry_summary, teacher_config  # noqa: E402


def test_default_geometry_tiles_like_sams() -> None:
    settings = ProxyV2Settings()
    summary = geometry_summary(teacher_config(settings.teacher_fields))
    assert summary["grid"] == 24 and summary["windows"] == "4 x 4 of 7"
    assert summary["edge_window"] == 3 and summary["depth"] == 6
    assert dict(settings.teacher_fields)["global_attn_indexes"] == (2, 5)
    assert summary["mask_logits"] == summary["img_size"]  # one logit per pixel


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--ratios", "0.5", "1.5"], "ratios: keep_ratio"),
        (["--ratios", "0"], "ratios: keep_ratio"),
        (["--teacher-steps", "0"], "teacher_steps must be >= 1"),
        (["--teacher-objects", "0"], "teacher_objects must be >= 1"),
        (["--dense"], "none is for the dev split only"),
        (["--teacher-refine-clicks", "-1"], "teacher_refine_clicks must be >= 0"),
        (["--split", "dev", "--assets-dir", "x"], "written from a test-split run only"),
        (["--teacher-checkpoint", "x.pth"], "dev split"),
        (["--student-global-context-pool", "5"], "global_context_pool"),
        (["--ratios", "1.0", "--dense", "vit_width"], "no width-shrunk vit_tiny matches"),
        (["--teacher-override", "img_size=66"], "does not tile"),
        (["--stop-after", "teacher"], "stop_after: for trying teacher recipes on the dev split"),
        (["--teacher-override", "global_attn_indexes=[2,6]"], "are outside 0..5"),
        (["--teacher-override", "depth"], "--teacher-override 'depth': expected KEY=VALUE"),
        (["--copy-dense-layers", "6"], "copy_dense_layers: dense_layers [6] are outside 0..5"),
    ],
)
def test_bad_settings_fail_before_any_stage(tmp_path: Path, argv, words, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--out-dir", str(tmp_path / "run"), *argv])
    assert exit_info.value.code == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "fields, words",
    [
        ((("img_size", 66),), "does not tile"),
        ((("global_attn_indexes", (2, 6)),), r"global_attn_indexes \[6\] are outside 0..5"),
    ],
)
def test_bad_geometry_is_named(fields, words) -> None:
    with pytest.raises(ValueError, match=words):
        ProxyV2Settings(teacher_overrides=fields, dense=("vit_width",)).check()


def test_dense_vits_match_the_big_little_students_macs_within_5_percent() -> None:
    settings = ProxyV2Settings(dense=("vit_width", "vit_depth"))
    teacher = teacher_config(settings.teacher_fields)
    matches = dense_matches(settings, teacher)
    assert [(k, r) for k, r, _, _ in matches] == [
        (k, r) for r in (0.5, 0.25, 0.1) for k in ("vit_width", "vit_depth")
    ]
    for kind, ratio, config, target in matches:
        student = settings.student_config(teacher)
        assert target == encoder_macs(student, keep_ratio=ratio)["total"]
        assert abs(encoder_macs(config)["total"] / target - 1) <= 0.05
        assert (config.depth == 6) if kind == "vit_width" else (config.depth < 6)
        assert config.img_size == teacher.img_size and config.patch_size == teacher.patch_size


def test_a_timm_student_loads_through_the_registry(tmp_path: Path, tiny_proxy_teacher) -> None:
    from biglittle_sam.distill.students import TimmStudentSpec, write_dense_student

    teacher_path, config = tiny_proxy_teacher
    spec = TimmStudentSpec("repvit", 8, (1, 1, 1, 1), config.img_size, config.patch_size, 64)
    path = write_dense_student(tmp_path / "repvit.pth", spec, teacher_path)
    sam = build_model_from_spec(parse_model_spec(f"vit_tiny={path}"))
    with torch.inference_mode():
        out = sam.image_encoder(torch.zeros(1, 3, config.img_size, config.img_size))
    assert out.shape == (1, 64, config.grid_size, config.grid_size)
    assert model_config(sam).name == spec.name  # what the evaluation labels it by
    with pytest.raises(TypeError, match="rebuilt as stored; no overrides"):
        sam_model_registry["vit_tiny"](checkpoint=path, depth=2)


@pytest.fixture
def tiny_proxy_teacher(tmp_path: Path):
    from biglittle_sam.build_sam import build_sam_from_config
    from biglittle_sam.checkpoint import save_model_checkpoint

    config = teacher_config(ProxyV2Settings(geometry="16").teacher_fields)
    path = save_model_checkpoint(tmp_path / "teacher.pth", build_sam_from_config(config), config)
    return path, config


def test_a_teacher_recipe_alone_on_dev(tmp_path: Path, one_thread) -> None:
    out = tmp_path / "teacher_only"
    argv = [
        "--out-dir", str(out), "--split", "dev", "--stop-after", "teacher", "--geometry", "16",
        "--train-images", "4", "--eval-images", "2", "--teacher-steps", "2",
        "--teacher-batch-size", "2", "--dense", "vit_width", "--student-global-context-pool", "4",
        "--teacher-override", "out_chans=32", "--device", "cpu", "--processes", "1",
        "--teacher-objects", "2", "--teacher-refine-clicks", "0", "--no-progress",
    ]  # fmt: skip
    result = cli.main(argv)
    assert result["stage_s"].keys() == {"data", "teacher"}
    recipe = json.loads((out / "teacher" / "settings.json").read_text())
    assert (recipe["max_instances"], recipe["refine_clicks"]) == (2, 0)
    teacher = torch.load(result["teacher"], map_location="cpu", weights_only=True)
    assert teacher["config"]["out_chans"] == 32
    assert (out / "data" / "dev").is_dir() and not (out / "cache").exists()
    assert len(list((out / "teacher" / "checkpoints").glob("step_*.pth"))) == 2


def test_proxy_v2_miniature(tmp_path: Path, one_thread, capsys) -> None:
    out = tmp_path / "v2"
    argv = [
        "--out-dir", str(out), "--geometry", "16", "--train-images", "6", "--eval-images", "3",
        "--teacher-steps", "2", "--teacher-batch-size", "2", "--student-steps", "1",
        "--phase2-steps", "1", "--batch-size", "2", "--ratios", "0.5", "0.25",
        "--dense", "vit_width", "--latency-rounds", "1", "--device", "cpu", "--processes", "1",
        "--student-global-context-pool", "4", "--no-progress",
    ]  # fmt: skip
    result = cli.main(argv)
    names = [r["model"] for r in result["rows"]]
    assert names[0] == "teacher"
    assert {"big.LITTLE r = 0.5", "big.LITTLE r = 0.25", "training-free r = 0.25"} <= set(names)
    copied = "big.LITTLE from training-free r = 0.25"  # the student that starts from it
    assert copied in names
    dense = [r for r in result["rows"] if r["variant"] == "vit_width"]
    assert [r["keep_ratio"] for r in dense] == [0.5, 0.25]
    by_name = {r["model"]: r for r in result["rows"]}
    for r in dense:  # matched in MACs to the big.LITTLE student at its ratio, within 5%
        twin = by_name[f"big.LITTLE r = {r['keep_ratio']:g}"]
        assert abs(r["gmacs"] / twin["gmacs"] - 1) <= 0.05
    assert by_name[copied]["gmacs"] > by_name["training-free r = 0.25"]["gmacs"]  # + E-blocks
    assert "from_training_free" in result["stage_s"]
    for r in result["rows"]:
        assert r["latency_ms"] > 0 and set(r["click1_bins"]) == {"small", "medium", "large"}
        assert all(v is None or 0 <= v <= 100 for v in r["click1_bins"].values())
    assert result["data"]["test"]["images"] == 3
    assert set(result["capacity_share"]) == {"learned", "random", "gradient energy (training-free)"}
    table = (out / "proxy_v2.md").read_text()
    assert "| big.LITTLE r = 0.25 |" in table and "## Targets" in table
    assert (out / "proxy_v2.png").stat().st_size > 0
    assert "| teacher |" in capsys.readouterr().out
    # the teacher's kept checkpoints give its mIoU against training minutes, binned in tokens
    curve = proxy_curve.main([str(out), "--split", "test", "--token-patch", "4"])
    assert [r["step"] for r in curve] == [1, 2]
    final = proxy_curve.main(  # a run's final model records its steps too
        [str(out), "--split", "test", "--token-patch", "4", "--checkpoints"]
        + [str(out / "teacher" / "model.pth")]
    )
    assert [r["step"] for r in final] == [2]
    assert set(curve[0]["box_by_bin"]) == {"small", "medium", "large"}
    saved = json.loads((out / "proxy_v2.json").read_text())
    with pytest.raises(ValueError, match="test split"):
        markdown(dict(saved, split="dev"))
    # the same models on a set drawn with another seed; a second call reuses its evaluation
    further = proxy_seeds.main([str(out), "--seeds", "77", "--images", "2", "--processes", "1"])
    assert [r["model"] for r in further["rows"]][:2] == ["teacher", "big.LITTLE r = 0.5"]
    assert further["rows"][0]["click1_kept"] == [1.0]
    assert "seed 77" in (out / "seeds" / "seeds.md").read_text()
    stamp = (out / "seeds" / "seed_77.json").stat().st_mtime_ns
    proxy_seeds.main([str(out), "--seeds", "77", "--images", "2", "--processes", "1"])
    assert (out / "seeds" / "seed_77.json").stat().st_mtime_ns == stamp
    with pytest.raises(SystemExit):  # a seed of the run's own splits
        proxy_seeds.main([str(out), "--seeds", str(saved["data"]["seeds"]["test"])])
    again = cli.main(argv + ["--resume"])  # every trained stage reused
    assert again["trained_in"]["wall_s"] == saved["wall_s"]
    assert [r["click1"] for r in again["rows"]] == [r["click1"] for r in result["rows"]]


ASSETS = Path(__file__).resolve().parents[1] / "biglittle_sam" / "assets"


def test_committed_models_are_the_v2_runs_and_segment() -> None:
    """The demo's built-in models: the v2 run's teacher and student, described by its table."""
    described = json.loads((ASSETS / "proxy_models.json").read_text())
    assert described["teacher"]["file"] == "proxy_teacher.pth"
    assert described["command"].startswith("python -m experiments.proxy2 ")
    assert "--assets-dir" in described["command"]
    assert "| big.LITTLE r = 0.25 |" in (ASSETS / "proxy_models.md").read_text()
    # the student that starts from the training-free model: it keeps the most of the teacher
    assert described["student"]["variant"] == "big.LITTLE from training-free"
    teacher = sam_model_registry["vit_tiny"](checkpoint=ASSETS / "proxy_teacher.pth")
    student = sam_model_registry["bl_tiny"](checkpoint=ASSETS / "proxy_student.pth", keep_ratio=0.5)
    assert student.image_encoder.teacher.startswith("vit_tiny:")
    assert student.image_encoder.config.little_correction
    summary = geometry_summary(model_config(teacher))
    assert (summary["grid"], summary["windows"], summary["depth"]) == (24, "4 x 4 of 7", 6)
    image = np.zeros((72, 96, 3), dtype=np.uint8)
    image[18:54, 24:72] = 200
    for sam in (teacher, student):
        predictor = SamPredictor(sam)
        predictor.set_image(image)
        masks, scores, _ = predictor.predict(box=np.array([24, 18, 72, 54]))
        assert masks.shape == (3, 72, 96) and scores.shape == (3,)
