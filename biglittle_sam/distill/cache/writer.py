"""The teacher embedding cache's writer: compute, store and check entries, sharded and resumable.

The layout is :mod:`.format`'s.

- Every file is written to a temporary name and renamed, so an interrupted run (or a full disk)
  never leaves a half-written entry under a real name, and an entry once written stays valid. A
  run (``verify`` too) first removes the temporary files that a killed run left, those older than
  its own start.
- Resumable: images with an entry are skipped. An entry file that a crash kept out of the index is
  checked (checksum) and adopted.
- Sharded under torchrun: rank r of W caches images r, r + W, ...; rank 0 merges the index.
- ``verify``: every entry of the source is loaded and checked (readable, shape, dtype, checksum,
  finite values, teacher); bad ones are recomputed.
"""

from __future__ import annotations

import datetime
import errno
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ...checkpoint import atomic_save, read_checkpoint
from ...config import BigLittleConfig, SamViTConfig, config_to_dict
from ...data.records import DatasetError, EvalDataset, ImageProblemError
from ...fidelity import valid_embedding_size
from ...fileio import atomic_open, sweep_temp_files
from ...runtime.amp import autocast_context, resolve_amp
from ...runtime.distributed import DistContext, init_distributed
from ...runtime.progress import Progress, format_duration
from ...train.data import build_image_source, image_key, preprocess_image, source_file_names
from ...train.models import file_sha256, load_sam
from .format import (
    CACHE_FORMAT,
    CACHE_VERSION,
    ENTRY_FORMAT,
    CacheError,
    TeacherCache,
    embedding_checksum,
    entry_path,
    entry_problem,
    read_index,
)

__all__ = ["CacheSettings", "CacheWriteError", "cache_teacher_embeddings", "sweep_stale_temps"]


class CacheWriteError(OSError):
    """Writing the cache failed (for example, the disk is full). Entries written before are kept."""


def _write_json(path: Path, payload: Any) -> None:
    """Compact JSON, written atomically (:func:`biglittle_sam.fileio.atomic_open`)."""
    with atomic_open(path, "w") as f:
        json.dump(payload, f)


def _write_entry(path: Path, payload: Dict[str, Any]) -> None:
    """One entry, atomically (a module-level function so tests can make it fail)."""
    atomic_save(payload, path)


def _plain_id(value: Any) -> Any:
    """An image id as the index stores it: ints and strings unchanged, anything else as text."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        return str(value)
    return value


@dataclass(frozen=True)
class CacheSettings:
    """A caching run. The defaults are the only defaults (the CLI passes given flags)."""

    images: str = ""  # COCO image folder, SA-1B folder, or any folder of images
    out: str = ""  # the cache folder
    teacher_checkpoint: str = ""  # the teacher SAM (official file or this project's)
    teacher: Optional[str] = None  # registry name when the checkpoint's size is not recognized
    dataset: Optional[str] = None  # coco, lvis, sa1b or folder; None: from the files
    annotations: Optional[str] = None  # COCO / LVIS json (to cache exactly its images)
    limit: Optional[int] = None  # only the first N images
    batch_size: int = 8  # images per teacher forward pass
    num_workers: int = 2  # image decoding processes
    device: str = "auto"  # auto, cpu, cuda, cuda:N (torchrun: one GPU per process)
    amp: str = "off"  # the targets in full fp32 by default; "bf16" is faster on GPUs
    verify: bool = False  # check every entry and recompute the bad ones
    strict: bool = False  # an unreadable image stops the run instead of being skipped
    flush_every: int = 100  # entries between index writes
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("images", "out", "teacher_checkpoint"):
            if not getattr(self, name):
                raise ValueError(f"{name} is required")
        if self.batch_size < 1 or self.flush_every < 1 or self.num_workers < 0:
            raise ValueError(
                "batch_size and flush_every must be >= 1 and num_workers >= 0, got "
                f"{self.batch_size}, {self.flush_every}, {self.num_workers}"
            )


class _CacheItems(Dataset):
    """Images to encode: preprocessed tensors, or the reason an image could not be read."""

    def __init__(
        self, source: EvalDataset, indices: Sequence[int], keys: Sequence[str], img_size: int
    ) -> None:
        self.source, self.indices, self.keys, self.img_size = source, list(indices), keys, img_size

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int) -> Dict[str, Any]:
        index = self.indices[j]
        record = self.source.record(index)
        item: Dict[str, Any] = {
            "key": self.keys[index],
            "file": record.file_name,
            "image_id": _plain_id(record.image_id),
        }
        try:
            image = self.source.load_image(record)
        except ImageProblemError as e:
            item["problem"] = e.problem.as_dict()
            return item
        tensor, input_size = preprocess_image(image, self.img_size)
        item.update(image=tensor, input_size=list(input_size), original_size=list(image.shape[:2]))
        return item


def _collate(items: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    return items


def _teacher_meta(
    teacher_checkpoint: str, name: Optional[str], ctx: DistContext
) -> Tuple[Any, SamViTConfig, Dict[str, Any]]:
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


def _prepare_folder(root: Path, meta: Dict[str, Any]) -> None:
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
    _write_json(path, meta)


def _shard_index_path(root: Path, rank: int, world: int) -> Path:
    return root / "index" / f"rank-{rank:05d}-of-{world:05d}.json"


def cache_teacher_embeddings(settings: CacheSettings) -> Optional[Dict[str, Any]]:
    """Compute and store the teacher embedding of every image of the source.

    Runs in one process or as one rank of a torchrun job (images sharded over ranks).

    Returns:
      On rank 0, a report: ``images``, ``cached`` (this run), ``already`` (kept), ``adopted``
      (entry files found outside the index), ``repaired`` (verify: bad entries recomputed, with
      reasons), ``skipped`` (unreadable images, with reasons), ``wall_s``; also written to
      ``<out>/cache_report.json``. None on other ranks.

    Raises:
      CacheError: the folder holds another teacher's cache (before any image is read).
      DatasetError: an unreadable image under ``strict``.
      CacheWriteError: a write failed (disk full, ...): entries written before are complete and
        kept, and a new run continues from them.
    """
    s = settings
    ctx, device = init_distributed(s.device)
    try:
        return _cache(s, ctx, device)
    finally:
        ctx.close()


def _cache(s: CacheSettings, ctx: DistContext, device: torch.device) -> Optional[Dict[str, Any]]:
    started = time.perf_counter()
    started_at = time.time()  # file times are wall-clock: temp files older than this are stale
    root = Path(s.out)
    teacher, config, meta = _teacher_meta(s.teacher_checkpoint, s.teacher, ctx)
    source = build_image_source(s.images, s.dataset, s.annotations, s.limit, need_masks=False)
    names = source_file_names(source)
    keys = [image_key(n) for n in names]
    if len(set(keys)) != len(keys):
        seen: Dict[str, str] = {}
        for n, k in zip(names, keys):
            if k in seen:
                raise DatasetError(f"two images of the source share the file name {n!r}")
            seen[k] = n
    error: Optional[BaseException] = None
    swept: List[Path] = []
    if ctx.is_main:  # before the other ranks start writing: every temp file found is another run's
        try:
            _prepare_folder(root, meta)
            swept = sweep_stale_temps(root, started_at)
        except BaseException as e:  # every rank must learn it, or the others wait forever
            error = e
    failed = ctx.broadcast(None if error is None else str(error))
    if error is not None:
        raise error
    if failed is not None:
        raise CacheError(failed)
    sha = meta["teacher"]["sha256"]
    shape: Tuple[int, int, int] = tuple(meta["embedding_shape"])  # type: ignore[assignment]
    entries, skipped = read_index(root)
    mine = ctx.shard(len(source))
    my_entries: Dict[str, Dict[str, Any]] = {}
    my_skipped: Dict[str, Dict[str, Any]] = {}
    todo: List[int] = []
    report: Dict[str, Any] = {"already": 0, "adopted": 0, "repaired": {}, "cached": 0}
    for i in mine:
        key = keys[i]
        path = entry_path(root, key)
        if s.verify:
            problem = entry_problem(path, key, shape, sha)
            if problem is None:
                my_entries[key] = entries.get(key) or _record_from_file(path, root)
                report["already"] += 1
            else:
                if problem != "missing" or key in entries:
                    report["repaired"][key] = problem
                todo.append(i)
        elif key in entries and path.is_file():
            my_entries[key] = entries[key]
            report["already"] += 1
        elif path.is_file() and entry_problem(path, key, shape, sha) is None:
            my_entries[key] = _record_from_file(path, root)
            report["adopted"] += 1
        else:
            todo.append(i)

    index_path = _shard_index_path(root, ctx.rank, ctx.world_size)
    progress = Progress(len(todo), desc="cache teacher", enabled=s.progress and ctx.is_main)
    amp_dtype = resolve_amp(s.amp, device)
    teacher = teacher.to(device).eval()
    encoder = teacher.image_encoder
    loader = DataLoader(
        _CacheItems(source, todo, keys, config.img_size),
        batch_size=s.batch_size,
        num_workers=s.num_workers,
        collate_fn=_collate,
    )
    since_flush = 0
    try:
        for items in loader:
            good = [it for it in items if "problem" not in it]
            for it in items:
                if "problem" in it:
                    if s.strict:
                        p = it["problem"]
                        raise DatasetError(
                            f"{p['file']}: {p['reason']}: {p['detail']} (stopped by --strict; "
                            "without it the image is skipped, logged and counted)"
                        )
                    problem = it["problem"]
                    my_skipped[it["key"]] = {**problem, "file": it["file"], "path": problem["file"]}
                    my_entries.pop(it["key"], None)
                    print(
                        f"skipped {it['file']}: {it['problem']['reason']}: "
                        f"{it['problem']['detail']}",
                        file=sys.stderr,
                        flush=True,
                    )
            if good:
                images = torch.stack([it["image"] for it in good]).to(device)  # (b, 3, S, S)
                with torch.no_grad(), autocast_context(device, amp_dtype):
                    out = encoder(images)  # (b, C, g, g)
                out = out.float().half().cpu()
                for it, emb in zip(good, out):
                    # clone: a row of ``out`` shares the batch's storage, and torch.save writes a
                    # view's whole storage (every entry would hold the batch, b times too big).
                    _store(root, it, emb.clone(), sha, config, my_entries, my_skipped)
                    report["cached"] += 1
                    since_flush += 1
            progress.update(len(items))
            if since_flush >= s.flush_every:
                _write_json(index_path, {"entries": my_entries, "skipped": my_skipped})
                since_flush = 0
    except OSError as e:
        _flush_best_effort(index_path, my_entries, my_skipped)
        raise CacheWriteError(
            e.errno or errno.EIO,
            f"writing the teacher cache {root} failed ({e}); the {len(my_entries)} entries of "
            "this process written before are complete and kept. Free space (or fix the problem) "
            "and run the same command again: it continues from them",
        ) from e
    finally:
        progress.close()
    _write_json(index_path, {"entries": my_entries, "skipped": my_skipped})
    report["skipped"] = dict(my_skipped)
    gathered = ctx.gather(report)
    if ctx.world_size > 1:
        import torch.distributed as dist

        dist.barrier()
    if not ctx.is_main:
        return None
    merged_entries, merged_skipped = read_index(root)
    _write_json(root / "index.json", {"entries": merged_entries, "skipped": merged_skipped})
    for part in (root / "index").glob("rank-*.json"):
        part.unlink()
    total: Dict[str, Any] = {"already": 0, "adopted": 0, "cached": 0, "repaired": {}, "skipped": {}}
    for r in gathered or []:
        for k in ("already", "adopted", "cached"):
            total[k] += r[k]
        total["repaired"].update(r["repaired"])
        total["skipped"].update(r["skipped"])
    wall = time.perf_counter() - started
    result = {
        "cache": str(root),
        "teacher": meta["teacher"]["name"] + ":" + meta["teacher"]["checkpoint"],
        "teacher_sha256": sha,
        "images": len(source),
        "entries": len(merged_entries),
        **total,
        "verified": s.verify,
        "world_size": ctx.world_size,
        "stale_temps_removed": len(swept),
        "wall_s": wall,
        "images_per_s": total["cached"] / wall if wall > 0 else None,
    }
    _write_json(root / "cache_report.json", result)
    if s.progress:
        print(
            f"teacher cache {root}: {len(merged_entries)} of {len(source)} images cached "
            f"({total['cached']} now, {total['already']} kept, {total['adopted']} adopted, "
            f"{len(total['repaired'])} repaired, {len(total['skipped'])} skipped) in "
            f"{format_duration(wall)}"
            + (f"; removed {len(swept)} stale temporary files" if swept else ""),
            flush=True,
        )
    return result


def _index_record(entry: Mapping[str, Any], path: Path, root: Path) -> Dict[str, Any]:
    """The index's record of the entry ``entry`` (its payload) stored at ``path``."""
    return {
        "file": entry["file"],
        "image_id": entry["image_id"],
        "input_size": list(entry["input_size"]),
        "original_size": list(entry["original_size"]),
        "valid": list(entry["valid"]),
        "checksum": entry["checksum"],
        "path": str(path.relative_to(root)),
    }


def _record_from_file(path: Path, root: Path) -> Dict[str, Any]:
    """The index's record of an entry file the index misses (checked before it is adopted)."""
    return _index_record(read_checkpoint(path), path, root)


def _store(
    root: Path,
    item: Mapping[str, Any],
    embedding: Tensor,
    sha: str,
    config: SamViTConfig,
    entries: Dict[str, Dict[str, Any]],
    skipped: Dict[str, Dict[str, Any]],
) -> None:
    """Write the entry of one image (``embedding``: C x g x g fp16) and record it in ``entries``."""
    key = item["key"]
    path = entry_path(root, key)
    valid = list(valid_embedding_size(tuple(item["input_size"]), config.img_size, config.grid_size))
    checksum = embedding_checksum(embedding)
    payload = {
        "format": ENTRY_FORMAT,
        "version": CACHE_VERSION,
        "embedding": embedding,  # (C, g, g) fp16
        "key": key,
        "image_id": item["image_id"],
        "file": item["file"],
        "input_size": list(item["input_size"]),
        "original_size": list(item["original_size"]),
        "valid": valid,
        "teacher": sha,
        "checksum": checksum,
    }
    _write_entry(path, payload)
    entries[key] = _index_record(payload, path, root)
    skipped.pop(key, None)


def _flush_best_effort(
    path: Path, entries: Dict[str, Dict[str, Any]], skipped: Dict[str, Dict[str, Any]]
) -> None:
    """Write the index part if the disk still allows it; the entries are safe either way (a new
    run adopts entry files that the index misses)."""
    try:
        _write_json(path, {"entries": entries, "skipped": skipped})
    except OSError:
        pass


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
