"""The settings of a teacher-cache run (``tools/cache_teacher.py``).

One frozen dataclass; every field has a one-line reason, which is also its ``--help`` line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ...runtime.cli import flag
from ...train.data import SOURCE_KINDS
from ...train.settings import AMP_MODES

__all__ = ["CacheSettings"]


@dataclass(frozen=True)
class CacheSettings:
    """A caching run. The defaults are the only defaults (the CLI passes given flags)."""

    images: str = flag(
        "", "COCO image folder, SA-1B folder, or any folder of images", required=True
    )
    out: str = flag("", name="--out-dir", old=("--out",))  # the cache folder (required)
    teacher_checkpoint: str = flag(
        "", "the teacher SAM (official file or this project's)", required=True
    )
    teacher: Optional[str] = None  # registry name when the checkpoint's size is not recognized
    dataset: Optional[str] = flag(
        None, "the images' format (default: from the files)", choices=SOURCE_KINDS
    )
    annotations: Optional[str] = None  # COCO / LVIS json whose images to cache (default: all)
    limit: Optional[int] = None  # only the first N images
    batch_size: int = 8  # images per teacher forward pass
    num_workers: int = 2  # image decoding processes
    device: str = "auto"  # auto, cpu, cuda, cuda:N (torchrun: one GPU per process)
    amp: str = flag(
        "off",
        "bf16 autocast (auto: on CUDA); off keeps the targets in full fp32",
        choices=AMP_MODES,
    )
    verify: bool = False  # check every entry and recompute the bad ones
    strict: bool = False  # an unreadable image stops the run instead of being skipped
    flush_every: int = 100  # entries between index writes
    progress: bool = True  # progress bar

    def __post_init__(self) -> None:
        for name in ("images", "out", "teacher_checkpoint"):
            if not getattr(self, name):
                raise ValueError(f"{name} is required")
        if self.batch_size < 1 or self.flush_every < 1 or self.num_workers < 0:
            raise ValueError(
                "batch_size and flush_every must be >= 1 and num_workers >= 0, got "
                f"{self.batch_size}, {self.flush_every}, {self.num_workers}"
            )
