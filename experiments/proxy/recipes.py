"""The proxy benchmark's training stages as recipe files (``--config``) for the stage CLIs.

``make proxy-benchmark`` runs every stage itself; these files let a user run one stage alone with
``biglittle-sam-finetune`` or ``biglittle-sam-distill``, at the same settings, on the data the
benchmark wrote under its ``--out-dir``. They are made from :class:`ProxyBenchmarkSettings` by the
same stage builders the pipeline uses, so they cannot drift from it (tests/test_recipes.py checks
the shipped files)::

    python -m experiments.proxy.recipes experiments/proxy/configs
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import yaml

from biglittle_sam.data.shapes import ShapesDataset
from biglittle_sam.fileio import atomic_open
from biglittle_sam.train.settings import settings_to_dict

from ..stages import phase1_settings, phase2_settings, stage_train, teacher_settings
from .settings import ProxyBenchmarkSettings

__all__ = ["MAKE_OUT_DIR", "stage_recipes", "write_recipes"]

MAKE_OUT_DIR = "outputs/proxy"  # where `make proxy-benchmark` writes

_HEADERS = {
    "teacher": "stage 1: the vit_tiny teacher, trained from scratch on the train split's masks",
    "distill_phase1": "stage 3: the bl_tiny student's phase 1 on the teacher's cached embeddings",
    "distill_phase2": "stage 4: phase 2 on the teacher's masks, from the phase-1 student",
}


def _train_split(out: Path, num_images: int) -> ShapesDataset:
    """Where the pipeline writes the train split under ``out`` (the shapes writer's COCO layout)."""
    root = out / "data" / "train"
    return ShapesDataset(
        root=root,
        coco_annotations=root / "coco" / "annotations" / "instances_shapes.json",
        coco_images=root / "coco" / "val2017",
        lvis_annotations=None,
        lvis_image_root=None,
        sa1b_dir=None,
        detections=None,
        num_images=num_images,
        num_instances=0,
    )


def stage_recipes(settings: ProxyBenchmarkSettings, device: str = "cpu") -> Dict[str, Any]:
    """The teacher, phase-1 and phase-2 settings of the pipeline, as it builds them.

    Arguments:
      settings: the benchmark's settings (their ``out_dir`` sets every path).
      device: the stages' device (the pipeline resolves ``auto``; a recipe names one).
    """
    s = settings
    out = Path(s.out_dir)
    train = _train_split(out, s.distill_count)

    def stage(
        name: str, steps: int, lr: float, batch: Optional[int] = None, keep: bool = False
    ) -> Any:
        return stage_train(
            out / name,
            steps,
            lr,
            batch or s.batch_size,
            seed=s.seed,
            device=device,
            num_workers=s.num_workers,
            threads=s.threads,
            progress=s.progress,
            resume=False,
            keep_checkpoints=keep,
        )

    teacher = teacher_settings(
        train,
        s.train_images,
        s.teacher_fields,
        s.teacher_focal_weight,
        stage("teacher", s.teacher_steps, s.teacher_lr, s.teacher_batch_size, keep=True),
    )
    phase1 = phase1_settings(
        train,
        out / "cache",
        out / "teacher" / "model.pth",
        s.student_overrides,
        s.keep_ratios,
        "encoder",
        stage("student", s.student_steps, s.student_lr),
    )
    phase2 = phase2_settings(
        phase1,
        train,
        out / "student" / "model.pth",
        stage("phase2", s.phase2_steps, s.phase2_lr),
        keep_ratios=s.phase2_keep_ratios,
        mask_weight=s.phase2_mask_weight,
        point_prob=s.phase2_point_prob,
        router_lr_scale=s.phase2_router_lr_scale,
    )
    return {"teacher": teacher, "distill_phase1": phase1, "distill_phase2": phase2}


def write_recipes(folder: Path, settings: ProxyBenchmarkSettings) -> Dict[str, Path]:
    """Write ``<folder>/{teacher,distill_phase1,distill_phase2}.yaml``; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, stage in stage_recipes(settings).items():
        path = folder / f"{name}.yaml"
        text = yaml.safe_dump(settings_to_dict(stage), sort_keys=False)
        header = (
            f"# The proxy benchmark's {_HEADERS[name]}.\n"
            "# Made by `python -m experiments.proxy.recipes experiments/proxy/configs` from the\n"
            "# benchmark's defaults (geometry 16). Paths are the\n"
            f"# benchmark's under {settings.out_dir}/.\n"
        )
        with atomic_open(path, "w") as f:
            f.write(header + text)
        written[name] = path
    return written


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.proxy.recipes", description=__doc__.split("\n")[0]
    )
    parser.add_argument("folder", help="where the three recipe files go")
    args = parser.parse_args(argv)
    settings = dataclasses.replace(ProxyBenchmarkSettings(), out_dir=MAKE_OUT_DIR)
    for path in write_recipes(Path(args.folder), settings).values():
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
