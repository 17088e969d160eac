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
from typing import Any, Dict, Optional, Sequence

from biglittle_sam.distill.cache import CacheSettings, cache_teacher_embeddings
from biglittle_sam.runtime.cli import add_settings_flags, run_cli, settings_kwargs
from biglittle_sam.train.cli import add_flag_groups

# CacheSettings' fields in the argument groups of --help, in their order there.
GROUPS = (
    ("images", ("images", "annotations", "dataset", "limit", "strict")),
    ("teacher", ("teacher_checkpoint", "teacher")),
    ("cache", ("out", "verify", "flush_every")),
    ("run", ("batch_size", "num_workers", "device", "amp")),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="biglittle-sam-cache-teacher",
        description="Compute and store a teacher SAM's image embeddings for distillation "
        "(resumable, atomic, sharded under torchrun).",
    )
    run = add_flag_groups(parser, CacheSettings, GROUPS)["run"]
    # Not a setting of the cache: how many CPU threads this process gives torch.
    run.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    add_settings_flags(run, CacheSettings, only=("progress",))
    return parser


def main(argv: Optional[Sequence[str]] = None) -> Optional[Dict[str, Any]]:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.out is None:
        parser.error("--out-dir is required: the cache folder")
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    settings = settings_kwargs(args, CacheSettings)
    # A CacheWriteError (a full disk) is an OSError: exit status 1, as for every runtime error.
    return run_cli(lambda: cache_teacher_embeddings(CacheSettings(**settings)))


if __name__ == "__main__":
    main()
