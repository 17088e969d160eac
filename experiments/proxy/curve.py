"""The proxy teacher's mIoU against training minutes, from the checkpoints its run kept.

The pipeline keeps the teacher's 4 step checkpoints (``teacher/checkpoints/step_<N>.pth``).
:func:`teacher_curve` evaluates each on a split of the same run (box, 1 and 3 clicks,
EfficientViT-SAM protocol), with the training minutes at that step from the teacher's
``metrics.jsonl`` and the box mIoU per relative size bin; :func:`curve_table` writes it as
markdown::

    python -m experiments.proxy.curve outputs/proxy --split dev
    python -m experiments.proxy.curve outputs/proxy_v2_dev --split dev --token-patch 4  # v2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from biglittle_sam.checkpoint import read_checkpoint
from biglittle_sam.eval.runner import EvalSettings

from ..stages import seeded_evaluation
from .data import bin_labels, image_areas, token_bins
from .report import relative_bin_miou
from .settings import split_seeds

__all__ = ["curve_table", "main", "teacher_curve"]


def _minutes_at(metrics: Path, step: int) -> Optional[float]:
    """Training minutes at ``step``: the ``elapsed_s`` of the last metrics line at or before it."""
    if not metrics.is_file():
        return None
    elapsed = None
    for line in metrics.read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        if entry.get("step", step + 1) <= step and "elapsed_s" in entry:
            elapsed = float(entry["elapsed_s"])
    return None if elapsed is None else elapsed / 60.0


def _step_of(payload: Dict[str, Any]) -> int:
    """The training step of a step checkpoint (``train.step``) or of a run's final model
    (``training.steps``)."""
    if "train" in payload:
        return int(payload["train"]["step"])
    if "training" in payload and "steps" in payload["training"]:
        return int(payload["training"]["steps"])
    raise ValueError("not a training checkpoint or final model: it records no training step")


def teacher_curve(
    out_dir: Path,
    split: str = "dev",
    checkpoints: Sequence[Path] = (),
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
    token_patch: Optional[int] = None,
) -> List[Dict[str, Any]]:
    """One row per teacher checkpoint: step, minutes, box / click1 / click3 mIoU and box mIoU per
    size bin, evaluated on ``out_dir/data/<split>``.

    Arguments:
      checkpoints: the checkpoints to evaluate; none: ``out_dir/teacher/checkpoints/step_*.pth``.
      token_patch: bin objects by their size in tokens of this many pixels (the second proxy
        benchmark's bins) instead of relative to the image (the first's).

    Raises:
      FileNotFoundError: no checkpoint, or the split's COCO files are missing.
    """
    out = Path(out_dir)
    paths = sorted(checkpoints or (out / "teacher" / "checkpoints").glob("step_*.pth"))
    if not paths:
        raise FileNotFoundError(
            f"{out / 'teacher' / 'checkpoints'}: no step_<N>.pth; the proxy benchmark keeps them "
            "for its teacher (runs before 2026-12-02 did not)"
        )
    coco = out / "data" / split / "coco"
    annotations = coco / "annotations" / "instances_shapes.json"
    if not annotations.is_file():
        config = read_checkpoint(paths[-1])["config"]  # the teacher's geometry
        raise FileNotFoundError(
            f"{annotations}: the {split} split is missing (a test run draws only train and test). "
            f"Proxy v2 at run seed 0: biglittle-sam-make-shapes --preset token-sized --img-size "
            f"{config['img_size']} --patch-size {config['patch_size']} --num-images 200 --seed "
            f"{split_seeds(0)[split]} --out-dir {out / 'data' / split}; proxy v1: run the "
            f"benchmark with --split {split}"
        )
    evaluation = seeded_evaluation(
        EvalSettings(
            models=tuple(f"vit_tiny={p}" for p in paths),
            images=str(coco / "val2017"),
            annotations=str(annotations),
            clicks=(1, 3),
            name=f"teacher_curve_{split}",
            seed=seed,
            device=device,
            out_dir=str(out / "eval"),
            plot_x="gmacs",
            progress=progress,
        )
    )
    if evaluation is None:  # only other ranks get None; this runs in one process
        raise RuntimeError("the evaluation returned no result")
    table = evaluation["instances"]
    if token_patch is None:
        bins = bin_labels(table["image_id"], table["area"], image_areas(annotations))
    else:
        bins = token_bins(annotations, table["ann_id"], token_patch)
    rows = []
    for path, model in zip(paths, evaluation["models"]):
        step = _step_of(read_checkpoint(path))
        miou = model["miou"]
        rows.append(
            {
                "checkpoint": str(path),
                "step": step,
                "minutes": _minutes_at(out / "teacher" / "metrics.jsonl", step),
                **{k: miou[k]["all"] for k in ("box", "click1", "click3")},
                "box_by_bin": relative_bin_miou(evaluation["ious"][model["label"]], bins)["box"],
            }
        )
    return sorted(rows, key=lambda r: r["step"])


def curve_table(rows: Sequence[Dict[str, Any]]) -> str:
    """The rows of :func:`teacher_curve` as a markdown table."""

    def number(value: Optional[float]) -> str:
        return "-" if value is None else f"{value:.1f}"

    lines = [
        "| steps | training minutes | box | 1 click | 3 clicks | box small / medium / large |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        by_bin = " / ".join(number(v) for v in r["box_by_bin"].values())
        lines.append(
            f"| {r['step']} | {number(r['minutes'])} | {number(r['box'])} | "
            f"{number(r['click1'])} | {number(r['click3'])} | {by_bin} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.proxy.curve", description=__doc__.split("\n")[0]
    )
    parser.add_argument("out_dir", type=Path, help="a proxy benchmark's output folder")
    parser.add_argument("--split", choices=["dev", "test"], default="dev", help="(default: dev)")
    parser.add_argument(
        "--checkpoints",
        type=Path,
        nargs="+",
        default=(),
        help="evaluate these instead of the kept teacher/checkpoints/step_*.pth",
    )
    parser.add_argument("--device", default="cpu", help="(default: cpu)")
    parser.add_argument(
        "--token-patch",
        type=int,
        default=None,
        help="bin objects by size in tokens of this many px (proxy v2: 4) (default: relative to "
        "the image, proxy v1)",
    )
    args = parser.parse_args(argv)
    rows = teacher_curve(
        args.out_dir, args.split, args.checkpoints, device=args.device, token_patch=args.token_patch
    )
    print(curve_table(rows), end="")
    return rows


if __name__ == "__main__":
    main()
