"""Cache a teacher SAM's image embeddings (fp16, one file per image) for distillation.

    biglittle-sam-cache-teacher --images sa1b/ --teacher-checkpoint sam_vit_b_01ec64.pth \
        --out cache/vit_b
    torchrun --nproc_per_node=8 tools/cache_teacher.py --images sa1b/ \
        --teacher-checkpoint sam_vit_h_4b8939.pth --out cache/vit_h --amp bf16
    biglittle-sam-cache-teacher ... --verify     # check every entry, recompute bad ones

Images already cached are skipped, so an interrupted run continues where it stopped. Flags left
out keep the library's defaults (``biglittle_sam.distill.CacheSettings``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Dict, Optional, Sequence

from biglittle_sam.distill.cache import CacheSettings, CacheWriteError, cache_teacher_embeddings
from biglittle_sam.train.cli import given, run_cli

_FIELDS = (
    "images",
    "out",
    "teacher_checkpoint",
    "teacher",
    "dataset",
    "annotations",
    "limit",
    "batch_size",
    "num_workers",
    "device",
    "amp",
    "flush_every",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Compute and store a teacher SAM's image embeddings for distillation "
        "(resumable, atomic, sharded under torchrun)."
    )
    data = parser.add_argument_group("images")
    data.add_argument("--images", required=True, help="COCO image folder, SA-1B folder or any")
    data.add_argument("--annotations", default=None, help="COCO / LVIS json: cache its images")
    data.add_argument("--dataset", choices=["coco", "lvis", "sa1b", "folder"], default=None)
    data.add_argument("--limit", type=int, default=None, help="only the first N images")
    data.add_argument(
        "--strict", action="store_true", help="stop at an unreadable image (default: skip it)"
    )
    teacher = parser.add_argument_group("teacher")
    teacher.add_argument("--teacher-checkpoint", required=True, help="the teacher SAM (.pth)")
    teacher.add_argument(
        "--teacher", default=None, help="vit_b / vit_l / vit_h when the file does not tell"
    )
    out = parser.add_argument_group("cache")
    out.add_argument("--out", required=True, help="the cache folder")
    out.add_argument("--verify", action="store_true", help="check every entry; recompute bad")
    out.add_argument("--flush-every", type=int, default=None, help="entries between index saves")
    run = parser.add_argument_group("run")
    run.add_argument("--batch-size", type=int, default=None)
    run.add_argument("--num-workers", type=int, default=None)
    run.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")
    run.add_argument("--amp", choices=["auto", "bf16", "off"], default=None)
    run.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    run.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> Optional[Dict[str, Any]]:
    args = build_parser().parse_args(argv)
    changes = given(args, _FIELDS)
    if args.verify:
        changes["verify"] = True
    if args.strict:
        changes["strict"] = True
    if args.no_progress:
        changes["progress"] = False
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)

    def work() -> Optional[Dict[str, Any]]:
        try:
            return cache_teacher_embeddings(CacheSettings(**changes))
        except CacheWriteError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            raise SystemExit(1) from None

    return run_cli(work)


if __name__ == "__main__":
    main()
