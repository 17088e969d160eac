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
from typing import Any, Dict, Optional, Sequence

from biglittle_sam.runtime.cli import add_settings_flags

from ..runs import run_benchmark_cli
from .pipeline import run_proxy_benchmark
from .settings import ProxyBenchmarkSettings

PROG = "python -m experiments.proxy"
# The flags, in this order; the other fields are the recipe's, fixed for the table.
_FLAGS = (
    "out_dir", "geometry", "split", "seed", "train_images", "distill_images", "eval_images",
    "teacher_steps", "teacher_lr", "teacher_batch_size", "student_little_dim",
    "student_little_heads", "student_little_mlp_ratio", "student_global_context",
    "student_global_context_pool", "student_steps", "student_lr",
    "phase2_steps", "phase2_lr", "routers_steps", "batch_size", "device", "processes", "threads",
    "num_workers", "keep_ratios", "phase2_keep_ratios", "eval_ratios", "progress", "assets_dir",
    "teacher_checkpoint", "resume",
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Proxy benchmark of distillation at SAM's token geometry.",
    )
    return add_settings_flags(parser, ProxyBenchmarkSettings, only=_FLAGS)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    return run_benchmark_cli(
        build_parser(), ProxyBenchmarkSettings, run_proxy_benchmark, PROG, argv
    )


if __name__ == "__main__":
    main()
