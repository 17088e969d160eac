"""The toy benchmark: shapes data, a tiny SAM teacher trained from scratch, its embedding cache,
a bl_tiny student distilled in two phases and its ablations, and their mIoU, end to end on CPU.

    biglittle-sam-toy-benchmark --out-dir outputs/toy_benchmark
    biglittle-sam-toy-benchmark --assets-dir biglittle_sam/assets   # also refresh the built-in
                                                                    # toy teacher and student

Writes ``toy_benchmark.md`` (table, targets, wall time, command), ``toy_benchmark.png`` and
``toy_benchmark.json`` under the output folder. Flags left out keep the library's defaults
(``biglittle_sam.benchmarks.toy.ToyBenchmarkSettings``).
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from typing import Any, Dict, Optional, Sequence

from biglittle_sam.benchmarks.toy import ToyBenchmarkSettings, run_toy_benchmark
from biglittle_sam.train.cli import describe_defaults, given, run_cli

_FIELDS = (
    "out_dir",
    "seed",
    "train_images",
    "distill_images",
    "val_images",
    "teacher_steps",
    "teacher_lr",
    "teacher_batch_size",
    "student_steps",
    "student_lr",
    "student_parts",
    "phase2_steps",
    "phase2_lr",
    "phase2_keep_ratios",
    "phase2_mask_weight",
    "phase2_point_prob",
    "phase2_router_lr_scale",
    "phase2_soft_targets",
    "phase2_ema_decay",
    "routers_steps",
    "scratch_steps",
    "scratch_lr",
    "batch_size",
    "processes",
    "threads",
    "num_workers",
    "assets_dir",
    "progress",
)

# The library's defaults, for --help (the flags default to None: only the ones given are used).
_DEFAULTS = {
    **dataclasses.asdict(ToyBenchmarkSettings()),
    "distill_images": "8000 (the teacher's images and more)",
    "scratch_steps": "--student-steps",
    "processes": "min(2, CPUs)",
    "assets_dir": "none (not written)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="biglittle-sam-toy-benchmark",
        description="End-to-end toy benchmark of distillation on synthetic shapes (CPU).",
    )
    data = parser.add_argument_group("data")
    data.add_argument("--train-images", type=int, default=None, help="the teacher's images")
    data.add_argument(
        "--distill-images", type=int, default=None, help="the students' (the teacher's and more)"
    )
    data.add_argument(
        "--val-images", type=int, default=None, help="shapes images to evaluate on (never trained)"
    )
    data.add_argument("--seed", type=int, default=None, help="data, weights and prompts")
    budget = parser.add_argument_group("budgets")
    budget.add_argument("--teacher-steps", type=int, default=None, help="teacher training steps")
    budget.add_argument("--teacher-lr", type=float, default=None, help="teacher peak lr")
    budget.add_argument("--teacher-batch-size", type=int, default=None, help="images per step")
    budget.add_argument("--student-steps", type=int, default=None, help="phase 1 steps")
    budget.add_argument("--student-lr", type=float, default=None, help="phase 1 peak lr")
    budget.add_argument(
        "--phase2-steps",
        type=int,
        default=None,
        help="phase 2 after the student's phase 1 (0: off)",
    )
    budget.add_argument("--phase2-lr", type=float, default=None, help="phase 2 peak lr")
    budget.add_argument(
        "--phase2-keep-ratios", type=float, nargs="+", default=None, help="drawn per phase 2 step"
    )
    budget.add_argument(
        "--phase2-mask-weight", type=float, default=None, help="mask loss against embedding's"
    )
    budget.add_argument(
        "--phase2-point-prob", type=float, default=None, help="share of objects given a point"
    )
    budget.add_argument(
        "--phase2-router-lr-scale", type=float, default=None, help="routers' lr / phase2 lr"
    )
    budget.add_argument(
        "--phase2-soft-targets",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the teacher's mask probabilities as targets",
    )
    budget.add_argument(
        "--phase2-ema-decay", type=float, default=None, help="phase 2's model: weight average"
    )
    budget.add_argument("--student-parts", default=None, help="what the student trains")
    budget.add_argument("--routers-steps", type=int, default=None, help="routers-only ablation")
    budget.add_argument(
        "--scratch-steps", type=int, default=None, help="no-teacher-init ablation steps"
    )
    budget.add_argument(
        "--scratch-lr", type=float, default=None, help="no-teacher-init ablation peak lr"
    )
    budget.add_argument(
        "--batch-size", type=int, default=None, help="images per step of the distillation stages"
    )
    run = parser.add_argument_group("run")
    run.add_argument("--processes", type=int, default=None, help="gloo processes per stage")
    run.add_argument("--threads", type=int, default=None, help="torch threads per process")
    run.add_argument("--num-workers", type=int, default=None, help="data loader processes")
    run.add_argument("--out-dir", default=None, help="output folder")
    run.add_argument("--assets-dir", default=None, help="write fp16 teacher / student here")
    run.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="stage lines and progress bars",
    )
    run.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run in the same out-dir (default: start again)",
    )
    return describe_defaults(parser, _DEFAULTS)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = build_parser().parse_args(argv)
    changes = given(args, _FIELDS)
    if args.resume:
        changes["resume"] = True
    words = list(sys.argv[1:] if argv is None else argv)
    changes["command"] = " ".join(["biglittle-sam-toy-benchmark", *map(shlex.quote, words)])
    settings = run_cli(lambda: dataclasses.replace(ToyBenchmarkSettings(), **changes))
    result = run_cli(lambda: run_toy_benchmark(settings))
    print(open(result["outputs"]["markdown"], encoding="utf-8").read())
    return result


if __name__ == "__main__":
    main()
