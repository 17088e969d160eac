"""The command-line tools: --help, and a real tiny run of each."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from biglittle_sam import sam_model_registry
from tools import benchmark, convert_checkpoint

TOOLS = [benchmark, convert_checkpoint]


@pytest.mark.parametrize("tool", TOOLS, ids=lambda t: t.__name__)
def test_help(tool, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        tool.main(["--help"])
    assert info.value.code == 0
    assert "usage" in capsys.readouterr().out


def test_benchmark_tiny_run(tmp_path: Path, capsys) -> None:
    report = benchmark.main(
        [
            "--sam", "vit_tiny", "--model", "bl_tiny", "--keep-ratios", "1.0", "0.25",
            "--peers", "none", "--repeats", "2", "--batch-sizes", "1", "2", "--batch-repeats", "1",
            "--pool-kv-ratios", "none", "--out-dir", str(tmp_path), "--no-progress",
        ]
    )  # fmt: skip
    rows = {r["name"]: r for r in report["results"]}
    fast_name = "SAM vit_tiny, fused attention (ours)"
    assert set(rows) == {
        "SAM vit_tiny (segment_anything)",
        fast_name,
        "bl_tiny r=1",
        "bl_tiny r=0.25",
    }
    base = rows["SAM vit_tiny (segment_anything)"]
    assert base["speedup"] == pytest.approx(1.0)
    ours = rows["bl_tiny r=0.25"]
    fast = rows[fast_name]
    assert ours["speedup_vs_fast"] == pytest.approx(fast["latency_s"] / ours["latency_s"])
    for r in rows.values():
        assert len(r["latency_runs_s"]) == 2 and r["latency_s"] > 0
        assert set(r["images_per_s"]) == {1, 2}
        assert r["efficiency"] == pytest.approx(r["speedup"] / r["flops_ratio"])
    assert rows["bl_tiny r=0.25"]["gmacs"] < rows["bl_tiny r=1"]["gmacs"]
    saved = json.loads((tmp_path / "benchmark.json").read_text())
    assert saved["meta"]["hardware"] and len(saved["results"]) == 4
    assert (tmp_path / "benchmark.md").read_text().startswith("| model |")
    assert (tmp_path / "benchmark.png").read_bytes()[:4] == b"\x89PNG"
    captured = capsys.readouterr()
    assert "bl_tiny r=0.25" in captured.out and captured.err == ""  # --no-progress


def test_benchmark_rejects_unknown_peer(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        benchmark.main(["--sam", "vit_tiny", "--model", "bl_tiny", "--peers", "nope"])
    assert info.value.code == 2 and "unknown peer" in capsys.readouterr().err


def test_convert_cli(tiny_sam_checkpoint: Path, tmp_path: Path, capsys) -> None:
    # a distilled encoder's layout: E-blocks and routers on SAM's weights
    student = sam_model_registry["bl_tiny"](sam_checkpoint=tiny_sam_checkpoint, training_free=False)
    enc = tmp_path / "enc.pth"
    torch.save(student.image_encoder.state_dict(), enc)
    out = tmp_path / "merged.pth"
    args = ["--encoder", str(enc), "--sam-checkpoint", str(tiny_sam_checkpoint)]
    convert_checkpoint.main(args + ["--output", str(out), "--model", "bl_tiny"])
    assert out.exists() and "wrote" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        convert_checkpoint.main(args + ["--output", str(out), "--model", "bl_b"])
    assert info.value.code == 2
    assert "does not fit" in capsys.readouterr().err


def test_benchmark_pooled_and_onnx_rows(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    report = benchmark.main(
        [
            "--sam", "vit_tiny", "--model", "bl_tiny", "--keep-ratios", "0.5",
            "--pool-kv-ratios", "0.25", "--onnx", "--peers", "none", "--repeats", "1",
            "--batch-sizes", "1", "2", "--batch-repeats", "1", "--max-batch-others", "1",
            "--no-memory", "--dtype", "bf16", "--markdown", str(tmp_path / "b.md"),
        ]
    )  # fmt: skip
    assert report["meta"]["dtype"] == "bf16"
    rows = {r["name"]: r for r in report["results"]}
    assert set(rows) == {
        "SAM vit_tiny (segment_anything)",
        "SAM vit_tiny, fused attention (ours)",
        "bl_tiny r=0.5",
        "bl_tiny r=0.25 pooled k/v",
        "SAM vit_tiny (onnxruntime)",
        "bl_tiny r=0.5 (onnxruntime)",
    }
    pooled = rows["bl_tiny r=0.25 pooled k/v"]
    assert pooled["family"] == "biglittle_pooled" and pooled["keep_ratio"] == 0.25
    assert pooled["speedup_vs_fast"] is not None
    onnx = rows["bl_tiny r=0.5 (onnxruntime)"]
    assert onnx["family"] == "onnx" and onnx["runtime"] == "onnxruntime"
    assert onnx["gmacs"] == rows["bl_tiny r=0.5"]["gmacs"] and onnx["speedup"] > 0
    # Context rows stop at --max-batch-others; SAM, fused SAM and big.LITTLE go on.
    assert set(onnx["images_per_s"]) == set(pooled["images_per_s"]) == {1}
    assert set(rows["bl_tiny r=0.5"]["images_per_s"]) == {1, 2}
    table = (tmp_path / "b.md").read_text()
    assert "measured up to batch 1 only" in table and "(onnxruntime)" in table
    assert "| bl_tiny r=0.25 pooled k/v |" in table
    # --onnx rows run beside PyTorch's: onnxruntime's threads sleep so they leave the CPU alone
    assert "threads sleep" in onnx["note"] and "threads sleep between operators" in table


def test_benchmark_compile_reports_compile_time() -> None:
    report = benchmark.main(
        [
            "--sam", "vit_tiny", "--model", "bl_tiny", "--keep-ratios", "0.5", "--no-fast-sam",
            "--pool-kv-ratios", "none", "--peers", "none", "--repeats", "1",
            "--batch-sizes", "1", "2", "--batch-repeats", "1", "--no-memory",
            "--compile", "--compile-backend", "aot_eager",
        ]
    )  # fmt: skip
    assert report["meta"]["config"]["compile"] is True
    for r in report["results"]:
        assert r["runtime"] == "pytorch+compile"
        # The first call at each batch size compiles; it is reported, not timed.
        assert set(r["compile_s"]) == {1, 2} and len(r["latency_runs_s"]) == 1
        assert r["compile_s"][1] > r["latency_s"]


def test_benchmark_rejects_bad_pool_kv_ratios(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        benchmark.main(["--pool-kv-ratios", "half"])
    assert info.value.code == 2
    assert "--pool-kv-ratios takes numbers" in capsys.readouterr().err


def test_benchmark_names_models_in_the_model_spec_form(monkeypatch, capsys) -> None:
    """``--model NAME@RATIO`` goes through the one spec parser: the ratio becomes the keep ratios;
    a checkpoint (timing needs no weights), an unknown name or a ratio given twice is refused."""
    seen = []

    def fake_run(cfg: benchmark.BenchmarkConfig, log) -> dict:
        seen.append(cfg)
        raise SystemExit(0)  # stop before timing anything

    monkeypatch.setattr(benchmark, "run_benchmark", fake_run)
    with pytest.raises(SystemExit):
        benchmark.main(["--model", "bl_tiny@0.25", "--sam", "vit_tiny", "--device", "cpu"])
    assert seen[0].model == "bl_tiny" and seen[0].sam == "vit_tiny"
    assert tuple(seen[0].keep_ratios) == (0.25,)
    for argv, message in (
        (["--model", "bl_tiny=weights.pth"], "timing needs no weights"),
        (["--model", "bl_nope"], "unknown model 'bl_nope'"),
        (["--model", "bl_tiny@0.25", "--keep-ratios", "0.5"], "drop --keep-ratios"),
    ):
        with pytest.raises(SystemExit) as info:
            benchmark.main(argv + ["--device", "cpu"])
        assert info.value.code == 2 and message in capsys.readouterr().err


def test_benchmark_training_free_rows() -> None:
    """--training-free times the big.LITTLE rows in the mode an official checkpoint gets: no
    LITTLE blocks, fewer MACs below r = 1."""
    report = benchmark.main(
        [
            "--sam", "vit_tiny", "--model", "bl_tiny", "--training-free", "--keep-ratios", "1",
            "0.5", "--no-fast-sam", "--pool-kv-ratios", "none", "--peers", "none", "--repeats",
            "1", "--batch-sizes", "1", "--no-memory",
        ]
    )  # fmt: skip
    rows = {r["name"]: r for r in report["results"]}
    assert set(rows) == {
        "SAM vit_tiny (segment_anything)",
        "bl_tiny r=1, training-free",
        "bl_tiny r=0.5, training-free",
    }
    assert report["meta"]["config"]["training_free"] is True
    assert (
        rows["bl_tiny r=0.5, training-free"]["gmacs"] < rows["bl_tiny r=1, training-free"]["gmacs"]
    )
