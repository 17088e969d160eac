"""gpu-check: skips with one line without CUDA; its pipeline runs (tiny models, on the CPU); and the
CUDA-marked tests it runs first (skipped here without a GPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from biglittle_sam import sam_model_registry
from experiments import gpu_check
from experiments.gpu_check import GpuCheckSettings, cuda_missing, run_gpu_check

from .conftest import randomize_

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_skips_cleanly_with_one_line_without_cuda(monkeypatch, tmp_path: Path, capsys) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--out-dir", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    assert captured.out.count("\n") == 1 and "skipped, no CUDA device" in captured.out
    assert captured.err == "" and not (tmp_path / "out").exists()
    with pytest.raises(RuntimeError, match="no CUDA device"):
        run_gpu_check(GpuCheckSettings(out_dir=str(tmp_path)))
    assert cuda_missing("cpu") is None


def test_pipeline_runs_and_writes_json_and_markdown(tmp_path: Path) -> None:
    tests = tmp_path / "cuda_tests"
    tests.mkdir()
    (tests / "test_marked.py").write_text(
        "import pytest\n\n\n@pytest.mark.cuda\ndef test_on_gpu():\n    assert True\n\n\n"
        "def test_not_marked():\n    raise AssertionError('not selected by -m cuda')\n"
    )
    settings = GpuCheckSettings(
        out_dir=str(tmp_path / "out"),
        device="cpu",
        sam="vit_tiny",
        model="bl_tiny",
        keep_ratios=(1.0, 0.25),
        pool_kv_ratios=(0.25,),
        batch_sizes=(1, 2),
        warmup=0,
        repeats=1,
        batch_repeats=1,
        distill_steps=3,
        distill_batch_size=2,
        distill_images=4,
        test_paths=(str(tests),),
    )
    result = run_gpu_check(settings)
    assert result["ok"]
    assert result["tests"]["status"] == "passed" and "1 passed" in result["tests"]["summary"]
    assert set(result["speed"]) == {"fp32", "bf16"}
    for dtype, report in result["speed"].items():
        rows = {r["name"]: r for r in report["results"]}
        assert report["meta"]["dtype"] == dtype
        assert {"bl_tiny r=1", "bl_tiny r=0.25", "bl_tiny r=0.25 pooled k/v"} <= set(rows)
        assert all(set(r["images_per_s"]) == {1, 2} for r in rows.values())  # batch 1 and "8"
    assert result["distill"]["steps"] == 3 and result["distill"]["finished"]
    saved = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert saved["distill"]["steps"] == 3
    markdown = (tmp_path / "out" / "gpu_check.md").read_text()
    assert "## Encoder speed, bf16" in markdown and "Distillation smoke run" in markdown


# The CUDA-marked tests gpu-check runs first -------------------------------------------------------


@pytest.mark.cuda
@needs_cuda
def test_cuda_keep_ratio_one_equals_sam(tiny_sam_checkpoint) -> None:
    sam = sam_model_registry["vit_tiny"](checkpoint=tiny_sam_checkpoint).cuda()
    bl = sam_model_registry["bl_tiny"](
        sam_checkpoint=tiny_sam_checkpoint, keep_ratio=1.0, training_free=False
    ).cuda()
    x = torch.randn(2, 3, 256, 256, device="cuda")
    with torch.no_grad():
        assert (sam.image_encoder(x) - bl.image_encoder(x)).abs().max().item() < 1e-4


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("pool_kv", [False, True])
def test_cuda_routed_encoder_matches_cpu(pool_kv: bool) -> None:
    torch.manual_seed(0)
    enc = sam_model_registry["bl_tiny"](keep_ratio=0.25, pool_kv=pool_kv).image_encoder
    randomize_(enc, std=0.05)
    x = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        cpu = enc(x)
        gpu = enc.cuda()(x.cuda()).cpu()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf16 = enc(x.cuda()).float().cpu()
    # TF32 convolutions on the GPU: not bit-equal to the CPU. Routing may flip a near-tie token.
    assert (cpu - gpu).abs().max().item() < 1e-2
    assert torch.isfinite(bf16).all()
    assert torch.nn.functional.cosine_similarity(cpu.flatten(1), bf16.flatten(1)).min() > 0.98
