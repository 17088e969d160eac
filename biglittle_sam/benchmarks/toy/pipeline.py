"""The toy benchmark's pipeline: the whole of distillation, end to end, on a small CPU machine.

1. Generate a synthetic shapes dataset (train and validation, different seeds).
2. Train a tiny SAM teacher (a ``segment_anything``-structured ViT, ``vit_tiny`` at 64 px) from
   scratch with ``finetune``.
3. Cache its embeddings of the distillation images (the teacher's training images and more of
   the same kind: synthetic data is free, and the student learns from each image only once or
   twice instead of memorising a few).
4. Distil a ``bl_tiny`` student that inherits from it: phase 1 (embeddings, the whole encoder),
   then phase 2 from the phase-1 model (the teacher's masks under box and point prompts, with
   the embedding loss kept on).
5. Two ablations of phase 1: the same student distilled without the teacher initialization (the
   whole encoder from random), and one whose routers alone train (E-blocks stay off at gamma 0),
   which shows what the router learns on its own.
6. Evaluate box, 1-click and 3-click mIoU on the validation set with the evaluation code of
   ``biglittle_sam.eval`` for: the teacher; the student at several keep ratios, after phase 2 and
   after phase 1 only; the student before distillation (inherited weights, fresh routers, gamma
   0); the student with a random router in place of the learned one; the student distilled
   without the teacher initialization (phase 1, against the phase-1 student); the routers-only
   student with its learned and with random routing.
7. Write ``toy_benchmark.md`` (the table, the targets, the command), ``toy_benchmark.png`` (1-click
   mIoU against keep ratio) and ``toy_benchmark.json`` (see :mod:`.report`); optionally copy the
   teacher and the student (fp16) with a description into an assets folder.

Training stages run as ``processes`` gloo processes (both cores of a 2-core machine) through
:func:`biglittle_sam.train.launch.launch`, the same code path as torchrun.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ...data.shapes import ShapesConfig, make_shapes_dataset
from ...distill.cache import cache_teacher_embeddings
from ...distill.distill import run_distillation
from ...eval.runner import EvalSettings
from ...runtime.hardware import hardware_description
from ...train.finetune import run_finetune
from ...train.launch import launch
from ...train.settings import TrainSettings, settings_to_dict
from ..assets import write_assets
from ..stages import (
    cache_settings,
    config_copy,
    finished,
    miou_row,
    phase1_settings,
    phase2_settings,
    seeded_evaluation,
    stage_train,
)
from ..stages import teacher_settings as stage_teacher
from ..stages import training_run
from .report import PHASE1, check_targets, plot_toy, stage_times, toy_table
from .settings import ToyBenchmarkSettings

__all__ = ["run_toy_benchmark"]


def _train(
    settings: ToyBenchmarkSettings,
    out: Path,
    steps: int,
    lr: float,
    batch_size: Optional[int] = None,
) -> TrainSettings:
    """The training settings of one stage: its budget, the run's seed, threads and resume."""
    s = settings
    return stage_train(
        out,
        steps,
        lr,
        batch_size or s.batch_size,
        seed=s.seed,
        device="cpu",
        num_workers=s.num_workers,
        threads=s.threads,
        progress=s.progress,
        resume=s.resume,
    )


def _log(settings: ToyBenchmarkSettings, message: str) -> None:
    """A time-stamped progress line (when ``settings.progress``)."""
    if settings.progress:
        stamp = datetime.datetime.now().strftime("%H:%M:%S")
        print(f"[toy {stamp}] {message}", flush=True)


def _random_router_copy(student: Path, target: Path) -> Path:
    """The student with ``routing = "random"`` in its config: the router ablation."""
    return config_copy(student, target, "random routing (ablation)", routing="random")


def _finished(result: Any, stage: str) -> Path:
    """The model a training stage wrote; RuntimeError when the stage stopped early."""
    return finished(result, "toy", stage)


def run_toy_benchmark(settings: ToyBenchmarkSettings) -> Dict[str, Any]:
    """Run every stage (see the module docstring) and write the outputs.

    Returns:
      The result: ``rows`` (one per model and keep ratio, with box / click1 / click3 mIoU and
      GMACs), ``targets`` (each target with its measured value and whether it is met),
      ``stage_s`` and ``wall_s``, the paths written.
    """
    s = settings
    out = Path(s.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    times: Dict[str, float] = {}
    nproc = s.nproc

    t = time.perf_counter()
    data = out / "data"
    shapes = dict(s.shapes)
    train = make_shapes_dataset(
        data / "train",
        ShapesConfig(num_images=s.distill_count, seed=s.seed + 1, **shapes),  # type: ignore
        overwrite=True,
    )
    val = make_shapes_dataset(
        data / "val",
        ShapesConfig(num_images=s.val_images, seed=s.seed + 2, **shapes),  # type: ignore
        overwrite=True,
    )
    times["data"] = time.perf_counter() - t
    _log(s, f"shapes: {train.num_instances} training and {val.num_instances} validation objects")

    t = time.perf_counter()
    teacher_settings = stage_teacher(
        train,
        s.train_images,
        s.teacher,
        s.teacher_focal_weight,
        _train(s, out / "teacher", s.teacher_steps, s.teacher_lr, s.teacher_batch_size),
    )
    _log(
        s,
        f"teacher: {s.teacher_steps} steps of {s.teacher_batch_size} images from scratch on "
        f"{nproc} process(es)",
    )
    teacher = _finished(launch(run_finetune, teacher_settings, nproc, s.threads), "teacher")
    times["teacher"] = time.perf_counter() - t

    t = time.perf_counter()
    cache_dir = out / "cache"
    cache = cache_settings(train, cache_dir, teacher, "cpu", s.progress, s.resume)
    launch(cache_teacher_embeddings, cache, nproc, s.threads)
    times["cache"] = time.perf_counter() - t

    distill_base = phase1_settings(
        train,
        cache_dir,
        teacher,
        (("little_dim", s.student_little_dim), ("little_heads", s.student_little_heads)),
        s.keep_ratios,
        s.student_parts,
        _train(s, out / "student", s.student_steps, s.student_lr),
    )
    t = time.perf_counter()
    _log(s, f"student: {s.student_steps} distillation steps, phase 1 ({s.student_parts})")
    phase1 = _finished(launch(run_distillation, distill_base, nproc, s.threads), "student")
    times["student"] = time.perf_counter() - t

    student = phase1
    if s.phase2_steps > 0:
        t = time.perf_counter()
        phase2 = phase2_settings(
            distill_base,
            train,
            phase1,
            dataclasses.replace(
                _train(s, out / "phase2", s.phase2_steps, s.phase2_lr),
                ema_decay=s.phase2_ema_decay,
            ),
            keep_ratios=s.phase2_keep_ratios,
            mask_weight=s.phase2_mask_weight,
            point_prob=s.phase2_point_prob,
            router_lr_scale=s.phase2_router_lr_scale,
            soft_targets=s.phase2_soft_targets,
        )
        _log(s, f"student: {s.phase2_steps} steps of phase 2 (the teacher's masks)")
        student = _finished(launch(run_distillation, phase2, nproc, s.threads), "phase 2")
        times["phase2"] = time.perf_counter() - t

    t = time.perf_counter()
    routers = dataclasses.replace(
        distill_base,
        train_parts="router",
        train=_train(s, out / "routers", s.routers_steps, s.student_lr),
    )
    _log(s, f"ablation: {s.routers_steps} steps training only the routers (E-blocks off)")
    routers_only = _finished(launch(run_distillation, routers, nproc, s.threads), "routers")
    times["routers"] = time.perf_counter() - t

    t = time.perf_counter()
    scratch_steps = s.scratch_steps or s.student_steps
    scratch = dataclasses.replace(
        distill_base,
        init="none",
        train_parts="encoder",
        train=_train(s, out / "scratch", scratch_steps, s.scratch_lr),
    )
    _log(s, f"ablation: {scratch_steps} steps without the teacher initialization")
    scratch_model = _finished(launch(run_distillation, scratch, nproc, s.threads), "scratch")
    times["scratch"] = time.perf_counter() - t

    undistilled = out / "student" / "init.pth"
    random_router = _random_router_copy(student, student.parent / "random_router.pth")
    routers_random = _random_router_copy(undistilled, out / "routers" / "random_router.pth")
    pooled = config_copy(
        student, student.parent / "pooled_kv.pth", "pooled keys/values (issue 6)", pool_kv=True
    )
    rows_spec: List[Tuple[str, str, Optional[float]]] = [("teacher", f"vit_tiny={teacher}", None)]
    variants: List[Tuple[str, Path]] = [("student", student)]
    if s.phase2_steps > 0:
        variants.append((PHASE1, phase1))
    variants += [
        ("before distillation", undistilled),
        ("random router", random_router),
        ("no teacher init", scratch_model),
        ("routers only", routers_only),
        ("routers only, random routing", routers_random),
        ("student, pooled k/v", pooled),
    ]
    for variant, path in variants:
        for r in s.eval_ratios:
            if r == 1.0 and variant not in ("student", PHASE1, "no teacher init"):
                continue  # equal to the teacher or the student by construction
            rows_spec.append((variant, f"bl_tiny={path}@{r:g}", r))
    t = time.perf_counter()
    _log(s, f"evaluating {len(rows_spec)} rows on {s.val_images} validation images")
    common: Dict[str, Any] = dict(
        images=str(val.coco_images),
        seed=s.seed,
        device="cpu",
        out_dir=str(out / "eval"),
        plot_x="gmacs",
        progress=s.progress,
    )  # both evaluations: the same images, seed and output folder
    evaluation = launch(
        seeded_evaluation,
        EvalSettings(
            models=tuple(spec for _, spec, _ in rows_spec),
            annotations=str(val.coco_annotations),
            clicks=(1, 3),
            name="miou_shapes",
            **common,
        ),
        nproc,
        s.threads,
    )
    students = [spec for _, spec, ratio in rows_spec if ratio is not None]
    fidelity = launch(
        seeded_evaluation,
        EvalSettings(
            models=tuple(students),
            teacher=f"vit_tiny={teacher}",
            task="fidelity",
            dataset="folder",
            name="fidelity_shapes",
            **common,
        ),
        nproc,
        s.threads,
    )
    times["eval"] = time.perf_counter() - t
    wall = time.perf_counter() - started

    embedding = {
        spec: dict(m["fidelity"], per_image=fidelity["per_image"][m["label"]]["mse"])
        for spec, m in zip(students, fidelity["models"])
    }
    rows = []
    for (variant, spec, ratio), model in zip(rows_spec, evaluation["models"]):
        fid = embedding.get(spec, {"mse": 0.0, "cosine": 1.0})  # the teacher against itself
        row = miou_row(variant, spec, ratio, model, evaluation["ious"])
        row.update(
            embedding_mse=fid["mse"],
            embedding_cosine=fid["cosine"],
            embedding_mses=fid.get("per_image"),
        )
        rows.append(row)
    result: Dict[str, Any] = {
        "format": "biglittle-sam-toy-benchmark",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": s.command,
        "settings": settings_to_dict(s),
        "hardware": hardware_description("cpu", nproc, s.threads),
        "data": {
            "train_images": s.train_images,
            "distill_images": s.distill_count,
            "val_images": s.val_images,
            "val_instances": evaluation["dataset"]["instances"],
        },
        "rows": rows,
        "stage_s": times,
        "wall_s": wall,
        "trained_in": training_run(out / "toy_benchmark.json", s.resume),
    }
    result["targets"] = check_targets(rows)
    md = out / "toy_benchmark.md"
    md.write_text(toy_table(result), encoding="utf-8")
    png = plot_toy(result, out / "toy_benchmark.png")
    result["outputs"] = {"markdown": str(md), "plot": str(png) if png else None}
    (out / "toy_benchmark.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    if s.assets_dir:
        result["assets"] = write_assets(
            result, teacher, student, Path(s.assets_dir), "toy", toy_table
        )
    _log(s, f"done in {wall:.0f} s ({stage_times(times)}); table: {md}")
    return result
