"""torchrun with 2 gloo processes on CPU gives exactly the numbers of a single process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.eval_helpers import REPO, copy_coco, read_json
from tools.eval_miou import main


def test_two_gloo_processes_match_one_process(
    eval_shapes, tiny_sam_checkpoint: Path, tmp_path: Path, one_thread
) -> None:
    ann, images = copy_coco(eval_shapes, tmp_path / "data")
    missing = sorted(images.iterdir())[2]
    missing.unlink()  # both runs must list it the same way
    args = ["--annotations", str(ann), "--images", str(images), "--device", "cpu", "--no-progress"]
    args += ["--model", f"vit_tiny={tiny_sam_checkpoint}"]
    args += ["--model", f"bl_tiny={tiny_sam_checkpoint}@0.5"]
    args += ["--protocol", "edgesam", "--clicks", "1", "3", "--name", "run", "--threads", "1"]

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["-m", "tools.eval_miou", *args, "--out-dir", str(tmp_path / "two")]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert main(args + ["--out-dir", str(tmp_path / "one")]) == 0

    two = read_json(tmp_path / "two" / "run.json")
    one = read_json(tmp_path / "one" / "run.json")
    assert two["run"]["world_size"] == 2 and two["run"]["backend"] == "gloo"
    assert one["run"]["world_size"] == 1
    assert two["ious"] == one["ious"]  # every per-instance IoU, bit for bit
    assert two["instances"] == one["instances"]
    for a, b in zip(two["models"], one["models"]):
        assert a["label"] == b["label"] and a["miou"] == b["miou"]
    for key in ("images_evaluated", "instances", "skipped_images", "skipped_annotations"):
        assert two["dataset"][key] == one["dataset"][key]
    assert [s["reason"] for s in one["dataset"]["skipped_images"]] == ["missing"]
    assert not (tmp_path / "two" / "run.json.tmp").exists()
