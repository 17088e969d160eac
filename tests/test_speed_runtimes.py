"""The speed benchmark across runtimes: PyTorch eager, PyTorch int8, onnxruntime fp32 and int8,
one subprocess per runtime, speedups against SAM in the same runtime (tiny models; the timings
themselves mean nothing here)."""

from __future__ import annotations

import json
import subprocess
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

from biglittle_sam.export import export_backbone
from biglittle_sam.speed import BenchmarkConfig, run_benchmark, run_runtimes
from biglittle_sam.speed import runtimes as runtimes_module
from biglittle_sam.speed import to_markdown
from biglittle_sam.speed.measure import _quantize_rows
from biglittle_sam.speed.rows import ModelResult, Row, build_rows, onnx_rows
from biglittle_sam.speed.runtimes import merge_reports
from tools import benchmark

TINY = dict(
    sam="vit_tiny",
    model="bl_tiny",
    keep_ratios=(1.0, 0.25),
    pool_kv_ratios=(0.25,),
    peers=(),
    batch_sizes=(1,),
    warmup=0,
    repeats=1,
    memory=False,
)


def _row(name: str, family: str, runtime: str, latency: float, speedup: float) -> dict:
    return {
        "name": name,
        "family": family,
        "runtime": runtime,
        "latency_s": latency,
        "speedup": speedup,
    }


def test_merge_keeps_same_runtime_speedups_and_adds_pytorch_sam() -> None:
    def report(runtime: str, sam: float, ours: float) -> dict:
        rows = [
            _row("SAM", "sam", runtime, sam, 1.0),
            _row("bl r=0.1", "biglittle", runtime, ours, sam / ours),
        ]
        return {"meta": {"config": {"runtime": runtime}, "hardware": "x"}, "results": rows}

    cfg = BenchmarkConfig(runtimes=("pytorch", "onnxruntime"))
    merged = merge_reports([report("pytorch", 16.0, 2.0), report("onnxruntime", 6.0, 2.0)], cfg)
    rows = {(r["runtime"], r["name"]): r for r in merged["results"]}
    assert merged["meta"]["runtimes"] == ["pytorch", "onnxruntime"]
    assert rows["onnxruntime", "bl r=0.1"]["speedup"] == 3.0  # against SAM in onnxruntime
    assert rows["onnxruntime", "bl r=0.1"]["speedup_vs_sam_pytorch"] == 8.0
    assert rows["onnxruntime", "SAM"]["speedup_vs_sam_pytorch"] == pytest.approx(16 / 6)


def test_unknown_runtime_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown runtime 'tensorrt'"):
        BenchmarkConfig(runtimes=("pytorch", "tensorrt"))
    with pytest.raises(ValueError, match="use --device cpu, not cuda"):
        BenchmarkConfig(runtimes=("pytorch", "onnxruntime-int8"), device="cuda")


def test_pytorch_int8_runtime_quantises_every_row() -> None:
    cfg = BenchmarkConfig(runtime="pytorch-int8", **TINY)
    entries = build_rows(cfg)
    _quantize_rows(entries, cfg)
    assert {e.result.runtime for e in entries} == {"pytorch-int8"}
    for e in entries:
        assert any(isinstance(m, DynamicLinear) for m in e.module.modules()), e.result.name


@pytest.mark.parametrize("runtime", ["onnxruntime", "onnxruntime-int8"])
def test_peers_are_timed_in_onnxruntime(tmp_path: Path, runtime: str) -> None:
    """A peer row (a timm backbone in a real run; a small conv net here) is exported with
    export_backbone and timed in the onnxruntime runtimes as the other rows are."""
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    peer = nn.Sequential(
        nn.Conv2d(3, 8, 4, stride=4), nn.GELU(), nn.Conv2d(8, 8, 1), nn.GELU(), nn.Conv2d(8, 8, 1),
        nn.GELU(), nn.Conv2d(8, 16, 2, stride=2),
    )  # fmt: skip
    with torch.no_grad():  # equal weights, which the exporter stores once (as TinyViT's can be)
        peer[4].weight.copy_(peer[2].weight)
        peer[4].bias.copy_(peer[2].bias)
    result = ModelResult("toy (a peer)", "peer", None, 32, 0.0, None, "n/a", note="backbone only")
    cfg = BenchmarkConfig(runtime=runtime, **TINY)
    (row,) = onnx_rows(cfg, [Row(result, peer, lambda: None)], tmp_path, lambda m: None, runtime)
    assert row.result.family == "peer" and row.result.runtime == runtime
    assert row.result.note.startswith("backbone only; exported with opset")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = peer(x)
    got = row(x)
    assert got.shape == expected.shape == (2, 16, 4, 4)
    cosine = nn.functional.cosine_similarity(got.flatten(), expected.flatten(), dim=0)
    if runtime == "onnxruntime":
        assert torch.allclose(got, expected, atol=1e-5)
    else:
        assert cosine > 0.99
    with pytest.raises(ValueError, match="img_size must be a positive integer"):
        export_backbone(peer, tmp_path / "bad.onnx", 0)


@pytest.mark.slow  # ~40 s: an ONNX export and quantisation in a subprocess; the CLI test below
# runs two runtimes in subprocesses in the default suite
def test_runtimes_each_in_its_own_process(tmp_path: Path) -> None:
    """PyTorch eager and onnxruntime int8 (export, quantisation and session: the longest path),
    each in a subprocess; the CLI test runs the PyTorch int8 one, and every runtime's rows are
    built in process by the tests above."""
    pytest.importorskip("onnxruntime")
    runtimes = ("pytorch", "onnxruntime-int8")
    cfg = BenchmarkConfig(runtimes=runtimes, **TINY)
    with pytest.raises(ValueError, match="run_runtimes"):
        run_benchmark(cfg)
    report = run_runtimes(cfg)
    assert report["meta"]["runtimes"] == list(runtimes)
    by_runtime = {}
    for r in report["results"]:
        by_runtime.setdefault(r["runtime"], {})[r["name"]] = r
    assert set(by_runtime) == set(runtimes)
    names = {
        "SAM vit_tiny (segment_anything)",
        "SAM vit_tiny, fused attention (ours)",
        "bl_tiny r=1",
        "bl_tiny r=0.25",
        "bl_tiny r=0.25 pooled k/v",
    }
    for runtime, rows in by_runtime.items():
        assert set(rows) == names, runtime
        sam = rows["SAM vit_tiny (segment_anything)"]
        assert sam["speedup"] == pytest.approx(1.0)  # each runtime's own SAM is its baseline
        ours = rows["bl_tiny r=0.25"]
        assert ours["speedup"] == pytest.approx(sam["latency_s"] / ours["latency_s"])
        base = by_runtime["pytorch"]["SAM vit_tiny (segment_anything)"]["latency_s"]
        assert ours["speedup_vs_sam_pytorch"] == pytest.approx(base / ours["latency_s"])
    note = by_runtime["onnxruntime-int8"]["bl_tiny r=0.25"]["note"]
    assert "quantize_onnx" in note and "threads spin" in note  # its own process: its default
    table = to_markdown(report)
    assert "| runtime |" in table.splitlines()[0] and "in the same runtime" in table
    assert "| bl_tiny r=0.25 | onnxruntime-int8 |" in table
    assert "onnxruntime's threads spin between operators" in table


def test_cli_runtimes_flag(tmp_path: Path) -> None:
    report = benchmark.main(
        [
            "--sam", "vit_tiny", "--model", "bl_tiny", "--keep-ratios", "0.5", "--peers", "none",
            "--pool-kv-ratios", "none", "--no-fast-sam", "--repeats", "1", "--batch-sizes", "1",
            "--no-memory", "--runtimes", "pytorch", "pytorch-int8", "--device", "cpu",
            "--out-dir", str(tmp_path), "--no-progress",
        ]
    )  # fmt: skip
    assert [r["runtime"] for r in report["results"]] == ["pytorch"] * 2 + ["pytorch-int8"] * 2
    for runtime in ("pytorch", "pytorch-int8"):  # each runtime's own SAM is its baseline
        sam, ours = [r for r in report["results"] if r["runtime"] == runtime]
        assert sam["speedup"] == pytest.approx(1.0)
        assert ours["speedup"] == pytest.approx(sam["latency_s"] / ours["latency_s"])
    saved = json.loads((tmp_path / "benchmark.json").read_text())
    assert saved["meta"]["config"]["runtimes"] == ["pytorch", "pytorch-int8"]


def _fake_subprocess(fail: set):
    """A stand-in for subprocess.run in the runtimes module: the runtimes in ``fail`` exit 1, the
    others write a one-row report (SAM, 2 s) where the real subprocess would."""

    def run(cmd, **kwargs):
        config = json.loads(Path(cmd[cmd.index("--config") + 1]).read_text())
        runtime = config["runtime"]
        if runtime in fail:
            return subprocess.CompletedProcess(cmd, 1, "", "Traceback\nValueError: broken export")
        row = asdict(
            ModelResult(
                "SAM vit_tiny (segment_anything)", "sam", None, 64, 1.0, 1.0, "analytic",
                latency_s=2.0, images_per_s={1: 0.5}, speedup=1.0, runtime=runtime,
            )
        )  # fmt: skip
        meta = {"config": config, "hardware": "x", "torch": "x", "dtype": "fp32"}
        report = {"meta": meta, "results": [row]}
        Path(cmd[cmd.index("--output") + 1]).write_text(json.dumps(report))
        return subprocess.CompletedProcess(cmd, 0, "", f"timed {runtime}\n")

    return run


def test_a_failed_runtime_keeps_the_others_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setattr(runtimes_module.subprocess, "run", _fake_subprocess({"onnxruntime"}))
    cfg = BenchmarkConfig(runtimes=("pytorch", "onnxruntime", "pytorch-int8"), **TINY)
    said: list = []
    report = run_runtimes(cfg, said.append)
    assert report["meta"]["runtimes"] == ["pytorch", "pytorch-int8"]
    assert "broken export" in report["meta"]["failed_runtimes"]["onnxruntime"]
    assert any("onnxruntime failed" in line for line in said)
    # the CLI writes what was measured, then exits 1 naming the runtime
    args = ["--device", "cpu", "--sam", "vit_tiny", "--model", "bl_tiny", "--peers", "none",
            "--runtimes", "pytorch", "onnxruntime", "--out-dir", str(tmp_path),
            "--no-progress"]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        benchmark.main(args)
    assert exit_info.value.code == 1
    assert "the onnxruntime runtime's benchmark process failed" in capsys.readouterr().err
    saved = json.loads((tmp_path / "benchmark.json").read_text())
    assert [r["runtime"] for r in saved["results"]] == ["pytorch"]
    assert (
        "Not timed, their process failed: onnxruntime." in (tmp_path / "benchmark.md").read_text()
    )
    monkeypatch.setattr(runtimes_module.subprocess, "run", _fake_subprocess({"pytorch"}))
    with pytest.raises(RuntimeError, match="every runtime's benchmark process failed"):
        run_runtimes(BenchmarkConfig(runtimes=("pytorch",), **TINY))
