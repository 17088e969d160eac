"""Check a CUDA GPU in minutes: CUDA-marked tests, SAM ViT-B against bl_b, a distill smoke run.

    make gpu-check                                  # outputs/gpu_check/gpu_check.{json,md}
    python -m biglittle_sam_tools.gpu_check --out-dir outputs/h200 --no-tests

Without a CUDA device it prints one line and exits 0. Exit 1 when the CUDA-marked tests fail or
the distillation does not finish; 2 for usage errors. The work is
``biglittle_sam.benchmarks.speed.gpu_check.run_gpu_check``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any, Dict, Optional, Sequence

from biglittle_sam.benchmarks.speed.gpu_check import GpuCheckSettings, cuda_missing, run_gpu_check
from biglittle_sam.train.cli import describe_defaults
from biglittle_sam.train.cli import given as given_flags
from biglittle_sam.train.cli import run_cli

_DEFAULTS = dataclasses.asdict(GpuCheckSettings())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpu-check",
        description="On one CUDA GPU: the CUDA-marked tests, SAM against big.LITTLE at every keep "
        "ratio in fp32 and bf16 at batch 1 and 8, and a short distillation; JSON and markdown "
        "into one folder. Skips with one line where no CUDA device exists.",
    )
    parser.add_argument("--out-dir", default=None, help="folder for gpu_check.json and .md")
    parser.add_argument("--sam", default=None, help="baseline SAM registry name")
    parser.add_argument("--model", default=None, help="big.LITTLE registry name")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds at batch 1")
    parser.add_argument("--distill-steps", type=int, default=None, help="distillation steps")
    parser.add_argument(
        "--tests",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the CUDA-marked tests (pytest -m cuda) (default: on)",
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="a line per stage on stderr (default: on)",
    )
    return describe_defaults(parser, _DEFAULTS)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    missing = cuda_missing()
    if missing:
        print(missing)
        return 0
    given: Dict[str, Any] = {"tests": args.tests}
    given.update(given_flags(args, ("out_dir", "sam", "model", "repeats", "distill_steps")))
    log = (lambda m: print(m, file=sys.stderr, flush=True)) if args.progress else None
    result = run_cli(lambda: run_gpu_check(GpuCheckSettings(**given), progress=log))
    folder = given.get("out_dir", GpuCheckSettings.out_dir)
    print(f"gpu-check: {'ok' if result['ok'] else 'FAILED'}; wrote {folder}/gpu_check.json and .md")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
