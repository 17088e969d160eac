"""The proxy benchmark: the distillation pipeline at SAM's token geometry, on mostly-background
shapes, with train / dev / test splits from separate seeds. Run from a clone (``make
proxy-benchmark`` runs the first line)::

    python -m experiments.proxy --out-dir outputs/proxy                 # the table (test split)
    python -m experiments.proxy --split dev --out-dir outputs/proxy_dev # choosing recipes
    python -m experiments.proxy --device cuda                           # the same on a GPU
    python -m experiments.proxy --assets-dir biglittle_sam/assets       # the demo models too
    python -m experiments.proxy --student-little-dim 8 --student-little-heads 1 \\
        --student-little-mlp-ratio 2 --out-dir outputs/proxy_lite      # bl_b_lite's analogue

Writes ``proxy_benchmark.json`` and, on the test split only, ``proxy_benchmark.md`` under the
output folder. Every flag defaults to ``experiments.proxy.ProxyBenchmarkSettings``.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from typing import Any, Dict, Optional, Sequence

from biglittle_sam.train.cli import run_cli

from .pipeline import run_proxy_benchmark
from .settings import GEOMETRIES, ProxyBenchmarkSettings

PROG = "python -m experiments.proxy"
_DEFAULTS = ProxyBenchmarkSettings()
# (field, type, help); every default is the settings' own.
_FLAGS = (
    ("out_dir", str, "output folder"),
    ("geometry", str, f"token grid side, one of {sorted(GEOMETRIES)}"),
    ("split", str, "evaluated split: dev (choosing recipes, no table) or test (the table)"),
    ("seed", int, "run seed; data seeds 3*seed + 1 / 2 / 3 for train / dev / test"),
    ("train_images", int, "the teacher's training images"),
    ("distill_images", int, "the students' training images (the teacher's and more)"),
    ("eval_images", int, "images of the evaluated split"),
    ("teacher_steps", int, "teacher training steps"),
    ("teacher_lr", float, "teacher learning rate"),
    ("teacher_batch_size", int, "images per teacher step"),
    ("student_little_dim", int, "the student's E-block width"),
    ("student_little_heads", int, "the student's E-block heads"),
    ("student_little_mlp_ratio", float, "the student's E-block MLP ratio (2: the lite analogue)"),
    ("student_steps", int, "distillation phase 1 steps"),
    ("student_lr", float, "phase 1 learning rate"),
    ("phase2_steps", int, "distillation phase 2 steps (0: off)"),
    ("phase2_lr", float, "phase 2 learning rate"),
    ("routers_steps", int, "routers-only ablation steps"),
    ("batch_size", int, "images per distillation step"),
    ("device", str, "auto (CUDA when available), cpu, cuda or cuda:N"),
    ("processes", int, "processes per training stage (default: 1 on cuda, 2 on cpu)"),
    ("threads", int, "torch threads per process"),
    ("num_workers", int, "data loader processes per training process"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Proxy benchmark of distillation at SAM's token geometry.",
    )
    choices = {"geometry": sorted(GEOMETRIES), "split": ["dev", "test"]}
    for name, kind, text in _FLAGS:
        parser.add_argument(
            "--" + name.replace("_", "-"),
            type=kind,
            default=getattr(_DEFAULTS, name),
            choices=choices.get(name),
            help=f"{text} (default: %(default)s)",
        )
    for name, text in (
        ("keep_ratios", "keep ratios drawn per phase 1 step"),
        ("phase2_keep_ratios", "keep ratios drawn per phase 2 step"),
        ("eval_ratios", "keep ratios of the table's rows"),
    ):
        parser.add_argument(
            "--" + name.replace("_", "-"),
            type=float,
            nargs="+",
            default=list(getattr(_DEFAULTS, name)),
            help=f"{text} (default: %(default)s)",
        )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=_DEFAULTS.progress,
        help="progress lines (default: on)",
    )
    parser.add_argument(
        "--assets-dir",
        default=None,
        help="test split only: also write the fp16 teacher and student (the demo's built-in "
        "models) here (default: not written)",
    )
    parser.add_argument(
        "--teacher-checkpoint",
        default=None,
        help="dev split only: use this trained teacher (same geometry) instead of training one, "
        "to try student recipes in minutes, e.g. biglittle_sam/assets/proxy_teacher.pth "
        "(default: trained)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run in the same out-dir (default: off)",
    )
    return parser


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    parser = build_parser()
    args = parser.parse_args(argv)
    names = [f for f, _, _ in _FLAGS] + ["keep_ratios", "phase2_keep_ratios", "eval_ratios"]
    changes: Dict[str, Any] = {n: getattr(args, n) for n in names}
    changes.update(
        progress=args.progress,
        resume=args.resume,
        assets_dir=args.assets_dir,
        teacher_checkpoint=args.teacher_checkpoint,
    )
    words = list(sys.argv[1:] if argv is None else argv)
    changes["command"] = " ".join([PROG, *map(shlex.quote, words)])
    settings = dataclasses.replace(_DEFAULTS, **changes)
    try:
        settings.check()
    except ValueError as error:
        parser.error(str(error))  # exit 2, before any stage runs
    result = run_cli(lambda: run_proxy_benchmark(settings))
    if result["outputs"]["markdown"]:
        with open(result["outputs"]["markdown"], encoding="utf-8") as f:
            print(f.read())
    return result


if __name__ == "__main__":
    main()
