"""torchrun with 2 gloo processes gives the weights of 1 process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import List

import torch

from biglittle_sam.checkpoint import read_checkpoint
from biglittle_sam.data import ShapesDataset
from tools import distill

from .train_fixtures import STUDENT_OVERRIDES

ROOT = Path(__file__).resolve().parents[1]


def _args(shapes: ShapesDataset, cache: Path, teacher: Path, out: Path) -> List[str]:
    overrides = [x for k, v in STUDENT_OVERRIDES for x in ("--override", f"{k}={v}")]
    return [
        "--cache", str(cache), "--images", str(shapes.coco_images),
        "--annotations", str(shapes.coco_annotations), "--phase", "2",
        "--student", "bl_tiny", "--teacher-checkpoint", str(teacher), *overrides,
        "--train-parts", "little,decoder", "--keep-ratios", "0.25", "0.5", "1.0",
        "--max-instances", "3", "--steps", "3", "--batch-size", "4", "--lr", "1e-3",
        "--warmup-steps", "1", "--num-workers", "0", "--threads", "1", "--no-progress",
        "--log-every", "1", "--device", "cpu", "--out-dir", str(out),
    ]  # fmt: skip


def _losses(out: Path) -> List[float]:
    return [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_two_gloo_processes_match_one_process(
    tmp_path: Path, shapes: ShapesDataset, teacher_cache: Path, teacher_ckpt: Path, one_thread
) -> None:
    one = distill.main(_args(shapes, teacher_cache, teacher_ckpt, tmp_path / "one"))
    assert one.finished
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["-m", "tools.distill", *_args(shapes, teacher_cache, teacher_ckpt, tmp_path / "two")]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    two = read_checkpoint(tmp_path / "two" / "model.pth")
    assert two["training"]["steps"] == 3
    last = read_checkpoint(tmp_path / "two" / "checkpoints" / "last.pth")["train"]
    assert last["world_size"] == 2 and len(last["rng"]) == 2
    a = read_checkpoint(one.model_path)["model"]  # type: ignore[arg-type]
    b = two["model"]
    assert a.keys() == b.keys()
    moved = 0
    init = read_checkpoint(tmp_path / "one" / "init.pth")["model"]
    for k in a:
        # Far below one step's size (lr 1e-3); see test_train_resume for the absolute tolerance.
        assert torch.allclose(a[k], b[k], atol=2e-5, rtol=1e-4), k
        moved += int(not torch.equal(a[k], init[k]))
    assert moved > 0
    la, lb = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(la) == len(lb) == 3
    assert all(abs(x - y) <= 1e-4 * max(1.0, abs(x)) for x, y in zip(la, lb)), (la, lb)
