"""The second proxy benchmark's pipeline: a teacher shaped like SAM ViT-B, and every student a
user could pick at the same encoder cost, distilled from it the same way.

1. Check the settings and match every dense student to its big.LITTLE student's MACs.
2. Write the train and evaluated splits: token-sized shapes (small 1-3 tokens across, medium
   3-10, large above, in COCO's proportions), each split from its own seed.
3. Train the teacher (``vit_tiny`` at the geometry) from scratch with ``finetune``.
4. Cache its embeddings; distil every student with the same data, steps and recipe: phase 1 on
   the embeddings, phase 2 on the teacher's masks through its frozen prompt encoder and decoder.
   The big.LITTLE student (``bl_tiny``, pooled global context) trains at all its ratios at once;
   so does the student that starts from the training-free model (``copy_student``: its edge
   score and copy rule, an E-block and a copy gate learned on top); each dense student
   (:func:`~.settings.dense_matches`) at its own size.
5. The training-free rows: the teacher's own weights in the training-free mode (no training).
6. Evaluate every row (box, 1 click, 3 clicks) on the chosen split; count each encoder's MACs and
   measure its CPU latency in one process (:mod:`.latency`).
7. Write ``proxy_v2.json`` always, ``proxy_v2.md`` and ``proxy_v2.png`` on the test split; with
   ``assets_dir``, the fp16 teacher and the student from the training-free model (the big.LITTLE
   student without ``copy_student``) as the demo's built-in models.

Every training stage resumes (``resume``) and runs unchanged on CUDA (``device="cuda"``).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from biglittle_sam.checkpoint import atomic_save
from biglittle_sam.config import SamViTConfig
from biglittle_sam.data.shapes import ShapesDataset, make_shapes_dataset, token_sized_shapes_config
from biglittle_sam.distill.cache import cache_teacher_embeddings
from biglittle_sam.distill.distill import DistillSettings, run_distillation
from biglittle_sam.distill.students import DENSE, write_dense_student
from biglittle_sam.eval.runner import EvalSettings
from biglittle_sam.train.finetune import run_finetune
from biglittle_sam.train.launch import launch

from .. import stages
from ..proxy.settings import geometry_summary, split_seeds
from ..runs import finish_run, progress_line, result_header, run_stage_train
from ..training_free import write_variants
from .report import BIG_LITTLE, FROM_TRAINING_FREE, markdown, write_report
from .rows import Row, capacity_shares, describe_split, finish_rows
from .settings import ProxyV2Settings, dense_label, dense_matches

__all__ = ["run_proxy_v2"]

TRAINING_FREE = "training-free"


def _log(s: ProxyV2Settings, message: str) -> None:
    progress_line(s, "proxy-v2", message)


def make_split(
    root: Path, s: ProxyV2Settings, img_size: int, count: int, seed: int
) -> ShapesDataset:
    """One token-sized split under ``root`` (the same images for the same seed and count)."""
    patch = dict(s.teacher_fields)["patch_size"]
    config = token_sized_shapes_config(img_size, patch, count, seed)
    return make_shapes_dataset(root, config, True)


def _distil(
    s: ProxyV2Settings,
    base: DistillSettings,
    train: ShapesDataset,
    out: Path,
    ratios: Tuple[float, ...],
) -> Path:
    """Phase 1 then phase 2 of one student (``base``: its phase 1); the phase-2 model's path."""
    student = stages.finished(
        launch(run_distillation, base, s.nproc, s.threads), "proxy v2", str(out)
    )
    if s.phase2_steps == 0:
        return student
    phase2 = stages.phase2_settings(
        base,
        train,
        student,
        run_stage_train(s, out / "phase2", s.phase2_steps, s.phase2_lr, s.batch_size),
        keep_ratios=ratios,
        mask_weight=10.0,
        point_prob=0.75,
        router_lr_scale=5.0,  # the first benchmark's phase 2 (no effect on a dense student)
    )
    return stages.finished(
        launch(run_distillation, phase2, s.nproc, s.threads), "proxy v2", str(out)
    )


def _teacher(s: ProxyV2Settings, out: Path, train: ShapesDataset, config: SamViTConfig) -> Path:
    """The run's teacher: the given one (dev, written in fp32 into the run) or one trained."""
    teacher = out / "teacher" / "model.pth"
    if s.teacher_checkpoint:
        if not (s.resume and teacher.is_file()):
            atomic_save(stages.read_teacher(Path(s.teacher_checkpoint), config), teacher)
        return teacher
    stage = run_stage_train(
        s, out / "teacher", s.teacher_steps, s.teacher_lr, s.teacher_batch_size, True
    )
    _log(s, f"teacher: {s.teacher_steps} steps on {s.nproc} process(es)")
    job = stages.teacher_settings(
        train,
        s.train_images,
        s.teacher_fields,
        s.teacher_focal_weight,
        stage,
        s.teacher_objects,
        s.teacher_refine_clicks,
    )
    return stages.finished(launch(run_finetune, job, s.nproc, s.threads), "proxy v2", "teacher")


def _phase1(
    s: ProxyV2Settings, folder: Path, train: ShapesDataset, cache_dir: Path, teacher: Path
) -> DistillSettings:
    """Phase 1 of the big.LITTLE student (pooled global context, every ratio and 1 drawn per
    step, the whole encoder), the recipe every dense student copies."""
    return stages.phase1_settings(
        train,
        cache_dir,
        teacher,
        s.student_overrides,
        s.ratios + (1.0,),
        s.student_parts,
        run_stage_train(s, folder, s.student_steps, s.student_lr, s.batch_size),
    )


def _dense_rows(
    s: ProxyV2Settings,
    base: DistillSettings,
    train: ShapesDataset,
    teacher: Path,
    matches: List[Tuple[str, float, Any, int]],
    out: Path,
    times: Dict[str, float],
) -> List[Row]:
    """Each dense student written from the teacher and distilled as the big.LITTLE student was
    (``base``: its phase 1), one row each; their stage times into ``times``."""
    rows: List[Row] = []
    for kind, ratio, spec, _ in matches:
        t = time.perf_counter()
        folder = out / "dense" / f"{kind}_r{ratio:g}"
        init = folder / "init.pth"
        if not (s.resume and init.is_file()):
            write_dense_student(init, spec, teacher, seed=s.seed)
        job = dataclasses.replace(
            base,
            student=DENSE,
            init_checkpoint=str(init),
            student_overrides=(),
            keep_ratios=(1.0,),
            train_parts="encoder",  # a dense student has no inherited blocks to keep
            train=run_stage_train(s, folder, s.student_steps, s.student_lr, s.batch_size),
        )
        label = dense_label(kind, ratio, spec)
        _log(s, f"dense student {label}")
        path = _distil(s, job, train, folder, (1.0,))
        rows.append(Row(kind, ratio, f"vit_tiny={path}", label=label))
        times[f"{kind}_r{ratio:g}"] = time.perf_counter() - t
    return rows


def _copy_rows(
    s: ProxyV2Settings,
    base: DistillSettings,
    train: ShapesDataset,
    out: Path,
    times: Dict[str, float],
) -> Tuple[List[Row], Optional[Path]]:
    """The student that starts from the training-free model, distilled as the big.LITTLE student
    was (``base``: its phase 1; same ratios, steps and recipe): one row per ratio, and its path
    (None without ``copy_student``)."""
    if not s.copy_student:
        return [], None
    t = time.perf_counter()
    folder = out / "from_training_free"
    job = dataclasses.replace(
        base,
        student_overrides=s.copy_student_overrides,
        keep_ratios=s.ratios + ((1.0,) if s.copy_at_one else ()),
        train=run_stage_train(s, folder, s.student_steps, s.student_lr, s.batch_size),
    )
    _log(s, f"student from the training-free model: {s.student_steps} + {s.phase2_steps} steps")
    path = _distil(s, job, train, folder, s.ratios)
    times["from_training_free"] = time.perf_counter() - t
    return [Row(FROM_TRAINING_FREE, r, f"bl_tiny={path}@{r:g}") for r in s.ratios], path


def _evaluate(s: ProxyV2Settings, rows: List[Row], evaluated: ShapesDataset, out: Path) -> Any:
    """Box, 1-click and 3-click mIoU of every row on the evaluated split (one evaluation)."""
    _log(s, f"evaluating {len(rows)} rows on {s.eval_images} {s.split} images")
    settings = EvalSettings(
        models=tuple(r.spec for r in rows),
        images=str(evaluated.coco_images),
        annotations=str(evaluated.coco_annotations),
        clicks=(1, 3),
        name=f"miou_proxy_v2_{s.split}",
        seed=s.seed,
        device=s.resolved_device,
        out_dir=str(out / "eval"),
        progress=s.progress,
    )
    return launch(stages.seeded_evaluation, settings, s.nproc, s.threads)


def run_proxy_v2(settings: ProxyV2Settings) -> Dict[str, Any]:
    """Run every stage (see the module docstring) and write the outputs.

    Raises:
      ValueError: a bad setting, or a dense student no size matches (before any stage runs).

    Returns:
      The result: ``rows`` (box / click1 / click3 mIoU, GMACs and latency per row),
      ``bin_counts``, ``capacity_share``, ``data``, ``stage_s``, ``wall_s`` and the paths written.
    """
    s = settings
    teacher_config = s.check()
    matches = dense_matches(s, teacher_config)
    out = Path(s.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started, times = time.perf_counter(), {}  # type: float, Dict[str, float]

    t = time.perf_counter()
    seeds, size = split_seeds(s.seed), teacher_config.img_size
    train = make_split(out / "data" / "train", s, size, s.train_images, seeds["train"])
    evaluated = make_split(out / "data" / s.split, s, size, s.eval_images, seeds[s.split])
    times["data"] = time.perf_counter() - t

    t = time.perf_counter()
    teacher = _teacher(s, out, train, teacher_config)
    times["teacher"] = time.perf_counter() - t
    if s.stop_after == "teacher":
        _log(s, f"stopped after the teacher: {teacher}")
        return {"split": s.split, "teacher": str(teacher), "stage_s": times, "outputs": {}}

    t = time.perf_counter()
    cache_dir = out / "cache"
    job = stages.cache_settings(train, cache_dir, teacher, s.resolved_device, s.progress, s.resume)
    launch(cache_teacher_embeddings, job, s.nproc, s.threads)
    times["cache"] = time.perf_counter() - t

    t = time.perf_counter()
    base = _phase1(s, out / "big_little", train, cache_dir, teacher)
    _log(s, f"big.LITTLE student: {s.student_steps} + {s.phase2_steps} steps")
    student = _distil(s, base, train, out / "big_little", s.ratios)
    times["big_little"] = time.perf_counter() - t

    rows = [Row("teacher", None, f"vit_tiny={teacher}")]
    rows += [Row(BIG_LITTLE, r, f"bl_tiny={student}@{r:g}") for r in s.ratios]
    copied, copy_student = _copy_rows(s, base, train, out, times)
    rows += copied
    rows += _dense_rows(s, base, train, teacher, matches, out, times)
    free = write_variants(teacher, ["edge"], out / "training_free")["edge"]
    rows += [Row(TRAINING_FREE, r, f"bl_tiny={free}@{r:g}") for r in s.ratios]

    t = time.perf_counter()
    evaluation = _evaluate(s, rows, evaluated, out)
    times["eval"] = time.perf_counter() - t
    t = time.perf_counter()
    table, bin_counts = finish_rows(rows, evaluation, evaluated, s)
    times["latency"] = time.perf_counter() - t
    t = time.perf_counter()
    shares = capacity_shares(str(student), evaluated, s)
    times["capacity"] = time.perf_counter() - t

    result: Dict[str, Any] = {
        **result_header(s, "biglittle-sam-proxy-v2", geometry_summary(teacher_config)),
        "data": {
            "seeds": seeds,
            "train": describe_split(train, teacher_config.patch_size),
            s.split: describe_split(evaluated, teacher_config.patch_size),
        },
        "rows": table,
        "bin_counts": bin_counts,
        "capacity_share": shares,
        "capacity_ratio": min(s.ratios),
        "stage_s": times,
        "wall_s": time.perf_counter() - started,
        "trained_in": stages.training_run(out / "proxy_v2.json", s.resume),
    }
    result["outputs"] = write_report(result, out)
    # The demo's student: the one that starts from the training-free model when it was trained
    # (it keeps more of the teacher at every ratio), else the big.LITTLE student.
    demo = copy_student or student
    result["demo_student"] = FROM_TRAINING_FREE if copy_student else BIG_LITTLE
    return finish_run(result, out / "proxy_v2.json", s, (teacher, demo), markdown, "proxy-v2")
