"""The proxy benchmark's pipeline: every stage at SAM's token geometry, on a held-out split.

1. Check the settings (geometry, keep ratios) before anything runs.
2. Write the train, dev and test splits of mostly-background shapes, each from its own seed.
3. Train the teacher (``vit_tiny`` at the proxy geometry) from scratch with ``finetune`` (on the
   dev split, ``teacher_checkpoint`` names a trained one to use instead).
4. Cache its embeddings; distil a ``bl_tiny`` student (``distill`` phase 1 on the whole encoder,
   then phase 2 on the teacher's masks); train the routers alone as an ablation.
5. Evaluate box, 1-click and 3-click mIoU on the chosen split (``dev`` while choosing recipes,
   ``test`` for the table): the teacher; the student at every keep ratio; the student with random
   routing and with the training-free update-norm routing; the routers-only student. Then the
   1-click retention per relative size bin at r = 0.25 and the heat map statistic.
6. Write ``proxy_benchmark.json`` always and ``proxy_benchmark.md`` on the test split only; with
   ``assets_dir`` (test split only), also the fp16 teacher and student as the demo's built-in
   models (:func:`~experiments.assets.write_assets`).

Training stages run as gloo processes (both cores of a 2-core machine) through
:func:`biglittle_sam.train.launch.launch`; with ``device="cuda"`` the same stages run on the GPU.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from biglittle_sam.checkpoint import atomic_save
from biglittle_sam.distill.cache import cache_teacher_embeddings
from biglittle_sam.distill.distill import run_distillation
from biglittle_sam.eval.runner import EvalSettings
from biglittle_sam.fileio import atomic_open
from biglittle_sam.train.finetune import run_finetune
from biglittle_sam.train.launch import launch
from biglittle_sam.train.settings import TrainSettings

from ..runs import finish_run, progress_line, result_header, run_stage_train
from ..stages import (
    cache_settings,
    config_copy,
    finished,
    miou_row,
    phase1_settings,
    phase2_settings,
    read_teacher,
    seeded_evaluation,
)
from ..stages import teacher_settings as stage_teacher
from ..stages import training_run
from .data import bin_labels, image_areas, make_proxy_split, object_share
from .heatmap import measure_capacity_share
from .report import HEURISTIC, RANDOM, bin_retention, check_proxy_targets, proxy_table
from .settings import ProxyBenchmarkSettings, geometry_summary, split_seeds

__all__ = ["run_proxy_benchmark"]

ROUTERS = "routers only"


def _log(settings: ProxyBenchmarkSettings, message: str) -> None:
    progress_line(settings, "proxy", message)


def _train(
    s: ProxyBenchmarkSettings,
    out: Path,
    steps: int,
    lr: float,
    batch: Optional[int] = None,
    keep_checkpoints: bool = False,
) -> TrainSettings:
    """One stage's training settings (``batch``: the students' by default)."""
    return run_stage_train(s, out, steps, lr, batch or s.batch_size, keep_checkpoints)


def _finished(result: Any, stage: str) -> Path:
    """The model a training stage wrote; RuntimeError when the stage stopped early."""
    return finished(result, "proxy", stage)


def run_proxy_benchmark(settings: ProxyBenchmarkSettings) -> Dict[str, Any]:
    """Run every stage (see the module docstring) and write the outputs.

    Raises:
      ValueError: a bad setting (before any stage runs).

    Returns:
      The result: ``rows`` (box / click1 / click3 mIoU and GMACs per model and keep ratio),
      ``targets``, ``bin_retention``, ``capacity_share``, ``data`` (split seeds and sizes),
      ``stage_s``, ``wall_s`` and the paths written.
    """
    s = settings
    teacher_config = s.check()
    device, nproc = s.resolved_device, s.nproc
    out = Path(s.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    times: Dict[str, float] = {}

    t = time.perf_counter()
    seeds = split_seeds(s.seed)
    size = teacher_config.img_size
    train = make_proxy_split(out / "data" / "train", size, s.distill_count, seeds["train"])
    evaluated = make_proxy_split(out / "data" / s.split, size, s.eval_images, seeds[s.split])
    times["data"] = time.perf_counter() - t
    _log(s, f"data: {train.num_instances} train and {evaluated.num_instances} {s.split} objects")

    t = time.perf_counter()
    if s.teacher_checkpoint:
        _log(s, f"teacher: {s.teacher_checkpoint} (given, not trained)")
        teacher = out / "teacher" / "model.pth"
        if not (s.resume and teacher.is_file()):  # the cache records the file's checksum
            atomic_save(read_teacher(Path(s.teacher_checkpoint), teacher_config), teacher)
    else:
        teacher_settings = stage_teacher(
            train,
            s.train_images,
            s.teacher_fields,
            s.teacher_focal_weight,
            _train(s, out / "teacher", s.teacher_steps, s.teacher_lr, s.teacher_batch_size, True),
        )
        _log(s, f"teacher: {s.teacher_steps} steps on {nproc} process(es), {device}")
        teacher = _finished(launch(run_finetune, teacher_settings, nproc, s.threads), "teacher")
    times["teacher"] = time.perf_counter() - t

    t = time.perf_counter()
    cache_dir = out / "cache"
    cache = cache_settings(train, cache_dir, teacher, device, s.progress, s.resume)
    launch(cache_teacher_embeddings, cache, nproc, s.threads)
    times["cache"] = time.perf_counter() - t

    base = phase1_settings(
        train,
        cache_dir,
        teacher,
        s.student_overrides,
        s.keep_ratios,
        "encoder",
        _train(s, out / "student", s.student_steps, s.student_lr),
    )
    t = time.perf_counter()
    _log(s, f"student: {s.student_steps} steps of phase 1")
    student = _finished(launch(run_distillation, base, nproc, s.threads), "student")
    times["student"] = time.perf_counter() - t
    if s.phase2_steps > 0:
        t = time.perf_counter()
        phase2 = phase2_settings(
            base,
            train,
            student,
            _train(s, out / "phase2", s.phase2_steps, s.phase2_lr),
            keep_ratios=s.phase2_keep_ratios,
            mask_weight=s.phase2_mask_weight,
            point_prob=s.phase2_point_prob,
            router_lr_scale=s.phase2_router_lr_scale,
        )
        _log(s, f"student: {s.phase2_steps} steps of phase 2 (the teacher's masks)")
        student = _finished(launch(run_distillation, phase2, nproc, s.threads), "phase 2")
        times["phase2"] = time.perf_counter() - t

    t = time.perf_counter()
    routers = dataclasses.replace(
        base, train_parts="router", train=_train(s, out / "routers", s.routers_steps, s.student_lr)
    )
    _log(s, f"ablation: {s.routers_steps} steps training only the routers")
    routers_only = _finished(launch(run_distillation, routers, nproc, s.threads), "routers")
    times["routers"] = time.perf_counter() - t

    random_router = config_copy(
        student, student.parent / "random_router.pth", RANDOM, routing="random"
    )
    heuristic = config_copy(
        student, student.parent / "update_norm.pth", HEURISTIC, routing="update_norm"
    )
    rows_spec: List[Tuple[str, str, Optional[float]]] = [("teacher", f"vit_tiny={teacher}", None)]
    for variant, path in (
        ("student", student),
        (RANDOM, random_router),
        (HEURISTIC, heuristic),
        (ROUTERS, routers_only),
    ):
        for r in s.eval_ratios:
            if r == 1.0 and variant != "student":
                continue  # equal to the student (or, routers only, the teacher) by construction
            rows_spec.append((variant, f"bl_tiny={path}@{r:g}", r))

    t = time.perf_counter()
    _log(s, f"evaluating {len(rows_spec)} rows on {s.eval_images} {s.split} images")
    evaluation = launch(
        seeded_evaluation,
        EvalSettings(
            models=tuple(spec for _, spec, _ in rows_spec),
            images=str(evaluated.coco_images),
            annotations=str(evaluated.coco_annotations),
            clicks=(1, 3),
            name=f"miou_proxy_{s.split}",
            seed=s.seed,
            device=device,
            out_dir=str(out / "eval"),
            plot_x="gmacs",
            progress=s.progress,
        ),
        nproc,
        s.threads,
    )
    times["eval"] = time.perf_counter() - t

    rows = [
        miou_row(variant, spec, ratio, model, evaluation["ious"])
        for (variant, spec, ratio), model in zip(rows_spec, evaluation["models"])
    ]
    table = evaluation["instances"]
    if evaluated.coco_annotations is None or evaluated.coco_images is None:
        raise RuntimeError(f"{evaluated.root}: the {s.split} split has no COCO files")
    bins = bin_labels(table["image_id"], table["area"], image_areas(evaluated.coco_annotations))
    teacher_ious = rows[0]["click1_ious"]
    retention = {
        f"{r['model']}": bin_retention(r["click1_ious"], teacher_ious, bins)
        for r in rows
        if r["keep_ratio"] == 0.25
    }

    t = time.perf_counter()
    shares = measure_capacity_share(
        str(student),
        evaluated.coco_images,
        evaluated.coco_annotations,
        0.25,
        device=device,
        limit=s.eval_images,
    )
    times["capacity"] = time.perf_counter() - t
    wall = time.perf_counter() - started

    result: Dict[str, Any] = {
        **result_header(s, "biglittle-sam-proxy-benchmark", geometry_summary(teacher_config)),
        "data": {
            "seeds": seeds,
            "train_images": s.train_images,
            "distill_images": s.distill_count,
            "eval_images": s.eval_images,
            "eval_instances": evaluation["dataset"]["instances"],
            "train_split": object_share(train),
            "eval_split": object_share(evaluated),
        },
        "rows": rows,
        "bin_retention": retention,
        "capacity_share": {
            name: {**dataclasses.asdict(c), "enrichment": c.enrichment}
            for name, c in shares.items()
        },
        "stage_s": times,
        "wall_s": wall,
        "trained_in": training_run(out / "proxy_benchmark.json", s.resume),
    }
    result["targets"] = check_proxy_targets(rows)
    outputs: Dict[str, Optional[str]] = {
        "json": str(out / "proxy_benchmark.json"),
        "markdown": None,
    }
    if s.split == "test":
        md = out / "proxy_benchmark.md"
        with atomic_open(md, "w", encoding="utf-8") as f:
            f.write(proxy_table(result))
        outputs["markdown"] = str(md)
    result["outputs"] = outputs
    json_path = out / "proxy_benchmark.json"
    return finish_run(result, json_path, s, (teacher, student), proxy_table, "proxy")
