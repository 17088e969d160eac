"""Cache a teacher SAM's image embeddings (fp16, one file per image) for distillation.

    biglittle-sam-cache-teacher --images sa1b/ --teacher-checkpoint sam_vit_b_01ec64.pth \
        --out-dir cache/vit_b
    torchrun --nproc_per_node=8 tools/cache_teacher.py --images sa1b/ \
        --teacher-checkpoint sam_vit_h_4b8939.pth --out-dir cache/vit_h --amp bf16
    biglittle-sam-cache-teacher ... --verify     # check every entry, recompute bad ones

Images already cached are skipped, so an interrupted run continues where it stopped. Flags left
out keep the library's defaults (``biglittle_sam.distill.CacheSettings``).
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Dict, Optional, Sequence

from biglittle_sam.distill.cache import CacheSettings, cache_teacher_embeddings
from biglittle_sam.train.cli import add_old_spelling, describe_defaults, given, run_cli

# The library's defaults, for --help (the flags default to None: only the ones given are used).
_DEFAULTS = dataclasses.asdict(CacheSettings(images="-", out="-", teacher_checkpoint="-"))
_DEFAULTS.update(annotations="none (every image of the folder)", threads="torch's choice")

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
    "progress",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="biglittle-sam-cache-teacher",
        description="Compute and store a teacher SAM's image embeddings for distillation "
        "(resumable, atomic, sharded under torchrun).",
    )
    data = parser.add_argument_group("images")
    data.add_argument(
        "--images", required=True, help="COCO image folder, SA-1B folder or any (required)"
    )
    data.add_argument("--annotations", default=None, help="COCO / LVIS json: cache its images")
    data.add_argument(
        "--dataset",
        choices=["coco", "lvis", "sa1b", "folder"],
        default=None,
        help="the images' format (default: from the files)",
    )
    data.add_argument("--limit", type=int, default=None, help="only the first N images")
    data.add_argument(
        "--strict", action="store_true", help="stop at an unreadable image (default: skip it)"
    )
    teacher = parser.add_argument_group("teacher")
    teacher.add_argument(
        "--teacher-checkpoint", required=True, help="the teacher SAM (.pth; required)"
    )
    teacher.add_argument(
        "--teacher", default=None, help="vit_b / vit_l / vit_h when the file does not tell"
    )
    out = parser.add_argument_group("cache")
    out.add_argument("--out-dir", dest="out", default=None, help="the cache folder (required)")
    add_old_spelling(out, "--out", "out")
    out.add_argument("--verify", action="store_true", help="check every entry; recompute bad")
    out.add_argument("--flush-every", type=int, default=None, help="entries between index saves")
    run = parser.add_argument_group("run")
    run.add_argument("--batch-size", type=int, default=None, help="images per teacher forward pass")
    run.add_argument("--num-workers", type=int, default=None, help="image decoding processes")
    run.add_argument(
        "--device", default=None, help="auto (CUDA when available), cpu, cuda or cuda:N"
    )
    run.add_argument(
        "--amp",
        choices=["auto", "bf16", "off"],
        default=None,
        help="bf16 autocast (auto: on CUDA); off keeps the targets in fp32",
    )
    run.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    run.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar"
    )
    return describe_defaults(parser, _DEFAULTS)


def main(argv: Optional[Sequence[str]] = None) -> Optional[Dict[str, Any]]:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.out is None:
        parser.error("--out-dir is required: the cache folder")
    changes = given(args, _FIELDS)
    if args.verify:
        changes["verify"] = True
    if args.strict:
        changes["strict"] = True
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)

    # A CacheWriteError (a full disk) is an OSError: exit status 1, as for every runtime error.
    return run_cli(lambda: cache_teacher_embeddings(CacheSettings(**changes)))


if __name__ == "__main__":
    main()
