"""The folder a teacher cache is written to: its ``cache.json`` (created, or checked against the
teacher), the temporary files a killed run left (swept), and the ranks' index parts.

The layout is :mod:`.format`'s; :mod:`.writer` fills the folder.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ...config import BigLittleConfig, SamViTConfig, config_to_dict
from ...fileio import atomic_open, sweep_temp_files
from ...runtime.distributed import DistContext
from ...train.models import file_sha256, load_sam
from .format import CACHE_FORMAT, CACHE_VERSION, CacheError, TeacherCache

__all__ = [
    "open_folder",
    "prepare_folder",
    "shard_index_path",
    "sweep_stale_temps",
    "teacher_meta",
    "write_json",
]


def write_json(path: Path, payload: Any) -> None:
    """Compact JSON, written atomically (:func:`biglittle_sam.fileio.atomic_open`)."""
    with atomic_open(path, "w") as f:
        json.dump(payload, f)


def teacher_meta(
    teacher_checkpoint: str, name: Optional[str], ctx: DistContext
) -> Tuple[Any, SamViTConfig, Dict[str, Any]]:
    """The teacher SAM, its config and the ``cache.json`` a cache of its embeddings carries
    (rank 0 computes the checkpoint's SHA-256 and shares it).

    Raises:
      CacheError: a big.LITTLE checkpoint (the teacher must be a plain SAM).
    """
    sam, config, _ = load_sam(teacher_checkpoint, name)
    if isinstance(config, BigLittleConfig):
        raise CacheError(
            f"{teacher_checkpoint}: is a big.LITTLE model ('{config.name}'); the teacher must be "
            "a plain SAM (vit_b / vit_l / vit_h, or a vit_tiny of this project)"
        )
    sha = file_sha256(teacher_checkpoint) if ctx.is_main else None
    sha = ctx.broadcast(sha)
    meta = {
        "format": CACHE_FORMAT,
        "version": CACHE_VERSION,
        "teacher": {
            "name": config.name,
            "checkpoint": Path(teacher_checkpoint).name,
            "sha256": sha,
            "config": config_to_dict(config),
        },
        "img_size": config.img_size,
        "embedding_shape": [config.out_chans, config.grid_size, config.grid_size],
        "dtype": "float16",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    return sam, config, meta


def prepare_folder(root: Path, meta: Dict[str, Any]) -> None:
    """Write ``cache.json`` for a new cache, or check that an existing one has the same teacher
    and shapes (CacheError otherwise)."""
    path = root / "cache.json"
    if path.exists():
        old = TeacherCache.read_meta(root)
        same_teacher = old["teacher"].get("sha256") == meta["teacher"]["sha256"]
        same_shape = (old.get("img_size"), list(old.get("embedding_shape") or [])) == (
            meta["img_size"],
            meta["embedding_shape"],
        )
        if not (same_teacher and same_shape):
            raise CacheError(
                f"{root}: already holds embeddings of teacher {old['teacher'].get('name')}:"
                f"{old['teacher'].get('checkpoint')} (SHA-256 "
                f"{str(old['teacher'].get('sha256'))[:12]}..., {old.get('img_size')} px), not of "
                f"{meta['teacher']['name']}:{meta['teacher']['checkpoint']} (SHA-256 "
                f"{meta['teacher']['sha256'][:12]}...); use another --out folder for this teacher"
            )
        return
    root.mkdir(parents=True, exist_ok=True)
    write_json(path, meta)


def shard_index_path(root: Path, rank: int, world: int) -> Path:
    """Rank ``rank``'s part of the index, merged into ``index.json`` by rank 0 at the end."""
    return root / "index" / f"rank-{rank:05d}-of-{world:05d}.json"


def open_folder(
    root: Path, meta: Dict[str, Any], ctx: DistContext, started_at: float
) -> List[Path]:
    """Rank 0 prepares the folder (:func:`prepare_folder`) and sweeps stale temporary files; a
    failure there is raised on every rank. Returns the files swept."""
    error: Optional[BaseException] = None
    swept: List[Path] = []
    if ctx.is_main:  # before the other ranks start writing: every temp file found is another run's
        try:
            prepare_folder(root, meta)
            swept = sweep_stale_temps(root, started_at)
        except BaseException as e:  # every rank must learn it, or the others wait forever
            error = e
    failed = ctx.broadcast(None if error is None else str(error))
    if error is not None:
        raise error
    if failed is not None:
        raise CacheError(failed)
    return swept


def sweep_stale_temps(root: Path, before: float) -> List[Path]:
    """Remove the temporary files a killed run left in the cache folder ``root``.

    :func:`biglittle_sam.fileio.sweep_temp_files` on each folder the cache writes to (``root``,
    ``index/``, ``entries/<xy>/``).

    Arguments:
      root: the cache folder.
      before: a ``time.time()``, the start of the run that sweeps. A temporary file modified since
        may belong to a writer that is still running, and is kept.

    Returns:
      The files removed.
    """
    folders = [root, root / "index"]
    if (root / "entries").is_dir():
        folders += sorted(p for p in (root / "entries").iterdir() if p.is_dir())
    return [path for folder in folders for path in sweep_temp_files(folder, before)]
