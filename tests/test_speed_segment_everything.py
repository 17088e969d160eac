"""Segment-everything timing split into encoder and decoder time (tiny models; a smoke test of the
bookkeeping, the times themselves mean nothing here)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from biglittle_sam import sam_model_registry
from biglittle_sam.speed.segment_everything import (
    decoder_ms_per_point,
    run_segment_everything,
    segment_everything_markdown,
    time_segment_everything,
)
from tools import benchmark


def test_encoder_time_is_part_of_the_total(monkeypatch) -> None:
    sam = sam_model_registry["bl_tiny"](keep_ratio=0.25)
    image = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    calls = []
    forward = sam.image_encoder.forward

    def slow_forward(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        time.sleep(0.05)  # a known encoder cost the hooks must see
        return forward(x)

    monkeypatch.setattr(sam.image_encoder, "forward", slow_forward)
    total, encoder, masks = time_segment_everything(sam, image, repeats=2, points_per_side=4)
    assert len(calls) == 3  # warm-up and two timed runs, one crop each
    assert 0.05 <= encoder < total and masks >= 0
    with pytest.raises(ValueError, match="repeats"):
        time_segment_everything(sam, image, repeats=0)
    with pytest.raises(ValueError, match="unknown generator"):
        time_segment_everything(sam, image, generator="quick")


def test_rows_and_end_to_end_speedups() -> None:
    report = run_segment_everything(
        sam="vit_tiny", model="bl_tiny", keep_ratios=(1.0, 0.25), points_per_side=4,
        image_hw=(64, 96), decoder_batches=(1, 4),
    )  # fmt: skip
    rows = {(r["name"], r["generator"]): r for r in report["results"]}
    assert list(rows) == [
        ("SAM vit_tiny", "upstream"), ("SAM vit_tiny", "fast"),
        ("bl_tiny r=1", "fast"), ("bl_tiny r=0.25", "fast"),
    ]  # fmt: skip
    upstream, fast = rows["SAM vit_tiny", "upstream"], rows["SAM vit_tiny", "fast"]
    assert upstream["speedup"] == pytest.approx(1.0)
    for r in rows.values():
        assert r["decoder_s"] == pytest.approx(r["total_s"] - r["encoder_s"])
        assert r["speedup"] == pytest.approx(upstream["total_s"] / r["total_s"])
        same = upstream if r["generator"] == "upstream" else fast
        assert r["speedup_same_generator"] == pytest.approx(same["total_s"] / r["total_s"])
    assert upstream["masks"] == fast["masks"]  # the same masks from both generators
    assert {p: set(s) for p, s in report["decoder_ms_per_point"].items()} == {
        "upstream": {"1", "4"}, "fast": {"1", "4"},
    }  # fmt: skip
    table = segment_everything_markdown(report)
    assert "| bl_tiny r=0.25 | fast |" in table and "4 points per side" in table
    assert "| fast |" in table and "| upstream |" in table
    with pytest.raises(ValueError, match="unknown generator"):
        run_segment_everything(sam="vit_tiny", model="", generators=("quick",))


def test_decoder_sweep_per_point() -> None:
    sam = sam_model_registry["vit_tiny"]()
    sweep = decoder_ms_per_point(sam, (1, 3), repeats=1, points=3)
    assert set(sweep) == {"upstream", "fast"}
    assert all(set(s) == {1, 3} and all(ms > 0 for ms in s.values()) for s in sweep.values())
    with pytest.raises(ValueError, match="batch sizes"):
        decoder_ms_per_point(sam, (0,))


def test_cli_option(tmp_path: Path) -> None:
    benchmark.main(
        [
            "--segment-everything", "--sam", "vit_tiny", "--model", "bl_tiny",
            "--keep-ratios", "0.5", "--points-per-side", "4", "--device", "cpu",
            "--out-dir", str(tmp_path), "--no-progress", "--generators", "fast",
            "--model-generators", "upstream", "fast",
        ]
    )  # fmt: skip
    saved = json.loads((tmp_path / "segment_everything.json").read_text())
    assert [(r["name"], r["generator"]) for r in saved["results"]] == [
        ("SAM vit_tiny", "fast"), ("bl_tiny r=0.5", "upstream"), ("bl_tiny r=0.5", "fast"),
    ]  # fmt: skip
    assert saved["results"][0]["speedup"] is None  # no SAM row with upstream's generator
    assert (tmp_path / "segment_everything.md").read_text().startswith("| model |")
