"""The teacher embedding cache's writer: compute, store and check entries, sharded and resumable.

The layout is :mod:`.format`'s; the folder's preparation is :mod:`.folder`'s, the settings
:mod:`.settings`'.

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

import errno
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ...checkpoint import atomic_save, read_checkpoint
from ...config import SamViTConfig
from ...data.records import DatasetError, EvalDataset, ImageProblemError
from ...fidelity import valid_embedding_size
from ...runtime.amp import autocast_context, resolve_amp
from ...runtime.distributed import DistContext, init_distributed
from ...runtime.progress import Progress, format_duration
from ...train.data import build_image_source, image_key, preprocess_image, source_file_names
from .folder import open_folder, shard_index_path, sweep_stale_temps, teacher_meta, write_json
from .format import (
    CACHE_VERSION,
    ENTRY_FORMAT,
    embedding_checksum,
    entry_path,
    entry_problem,
    read_index,
)
from .settings import CacheSettings

__all__ = ["CacheSettings", "CacheWriteError", "cache_teacher_embeddings", "sweep_stale_temps"]


class CacheWriteError(OSError):
    """Writing the cache failed (for example, the disk is full). Entries written before are kept."""


def _write_entry(path: Path, payload: Dict[str, Any]) -> None:
    """One entry, atomically (a module-level function so tests can make it fail)."""
    atomic_save(payload, path)


def _plain_id(value: Any) -> Any:
    """An image id as the index stores it: ints and strings unchanged, anything else as text."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        return str(value)
    return value


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
    """:func:`cache_teacher_embeddings` on this rank: plan, encode, then (rank 0) merge."""
    started = time.perf_counter()
    started_at = time.time()  # file times are wall-clock: temp files older than this are stale
    root = Path(s.out)
    teacher, config, meta = teacher_meta(s.teacher_checkpoint, s.teacher, ctx)
    source, keys = _source_and_keys(s)
    swept = open_folder(root, meta, ctx, started_at)
    sha = meta["teacher"]["sha256"]
    shape: Tuple[int, int, int] = tuple(meta["embedding_shape"])  # type: ignore[assignment]
    kept, todo, report = _plan(s, root, ctx.shard(len(source)), keys, shape, sha)
    shard = _Shard(root, sha, config, shard_index_path(root, ctx.rank, ctx.world_size), kept)
    progress = Progress(len(todo), desc="cache teacher", enabled=s.progress and ctx.is_main)
    amp_dtype = resolve_amp(s.amp, device)
    encoder = teacher.to(device).eval().image_encoder
    loader = DataLoader(
        _CacheItems(source, todo, keys, config.img_size),
        batch_size=s.batch_size,
        num_workers=s.num_workers,
        collate_fn=_collate,
    )
    try:
        report["cached"] = _encode(s, loader, encoder, device, amp_dtype, shard, progress)
    except OSError as e:
        _flush_best_effort(shard)
        raise CacheWriteError(
            e.errno or errno.EIO,
            f"writing the teacher cache {root} failed ({e}); the {len(shard.entries)} entries of "
            "this process written before are complete and kept. Free space (or fix the problem) "
            "and run the same command again: it continues from them",
        ) from e
    finally:
        progress.close()
    shard.flush()
    report["skipped"] = dict(shard.skipped)
    gathered = ctx.gather(report)
    if ctx.world_size > 1:
        import torch.distributed as dist

        dist.barrier()
    if not ctx.is_main:
        return None
    return _merge(s, root, meta, len(source), gathered or [], ctx.world_size, swept, started)


def _source_and_keys(s: CacheSettings) -> Tuple[EvalDataset, List[str]]:
    """The images to cache and their cache keys.

    Raises:
      DatasetError: two images whose file names give the same key.
    """
    source = build_image_source(s.images, s.dataset, s.annotations, s.limit, need_masks=False)
    names = source_file_names(source)
    keys = [image_key(n) for n in names]
    if len(set(keys)) != len(keys):
        seen: Dict[str, str] = {}
        for n, k in zip(names, keys):
            if k in seen:
                raise DatasetError(f"two images of the source share the file name {n!r}")
            seen[k] = n
    return source, keys


def _plan(
    s: CacheSettings,
    root: Path,
    mine: Sequence[int],
    keys: Sequence[str],
    shape: Tuple[int, int, int],
    sha: str,
) -> Tuple[Dict[str, Dict[str, Any]], List[int], Dict[str, Any]]:
    """Sort this rank's images (``mine``) into entries to keep or adopt and images to encode.

    Returns:
      (the entries kept, by key; the indices to encode; the report's ``already``, ``adopted``,
      ``repaired`` and ``cached`` counts so far).
    """
    entries, _ = read_index(root)
    kept: Dict[str, Dict[str, Any]] = {}
    todo: List[int] = []
    report: Dict[str, Any] = {"already": 0, "adopted": 0, "repaired": {}, "cached": 0}
    for i in mine:
        key = keys[i]
        path = entry_path(root, key)
        if s.verify:
            problem = entry_problem(path, key, shape, sha)
            if problem is None:
                kept[key] = entries.get(key) or _record_from_file(path, root)
                report["already"] += 1
            else:
                if problem != "missing" or key in entries:
                    report["repaired"][key] = problem
                todo.append(i)
        elif key in entries and path.is_file():
            kept[key] = entries[key]
            report["already"] += 1
        elif path.is_file() and entry_problem(path, key, shape, sha) is None:
            kept[key] = _record_from_file(path, root)
            report["adopted"] += 1
        else:
            todo.append(i)
    return kept, todo, report


@dataclass
class _Shard:
    """This rank's part of the cache being written: where, for which teacher, and its index."""

    root: Path
    sha: str  # the teacher checkpoint's SHA-256
    config: SamViTConfig  # the teacher's
    index_path: Path  # this rank's index part
    entries: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # index records, by key
    skipped: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # unreadable, by key

    def flush(self) -> None:
        """Write this rank's index part."""
        write_json(self.index_path, {"entries": self.entries, "skipped": self.skipped})


def _encode(
    s: CacheSettings,
    loader: DataLoader,
    encoder: torch.nn.Module,
    device: torch.device,
    amp_dtype: Optional[torch.dtype],
    shard: _Shard,
    progress: Progress,
) -> int:
    """Encode the loader's images and store an entry for each in ``shard`` (unreadable ones are
    skipped), writing its index every ``flush_every`` entries; returns the count."""
    cached = since_flush = 0
    for items in loader:
        good = [it for it in items if "problem" not in it]
        for it in items:
            if "problem" in it:
                _skip(it, s.strict, shard)
        if good:
            images = torch.stack([it["image"] for it in good]).to(device)  # (b, 3, S, S)
            with torch.no_grad(), autocast_context(device, amp_dtype):
                out = encoder(images)  # (b, C, g, g)
            out = out.float().half().cpu()
            for it, emb in zip(good, out):
                # clone: a row of ``out`` shares the batch's storage, and torch.save writes a
                # view's whole storage (every entry would hold the batch, b times too big).
                _store(shard, it, emb.clone())
                cached += 1
                since_flush += 1
        progress.update(len(items))
        if since_flush >= s.flush_every:
            shard.flush()
            since_flush = 0
    return cached


def _skip(item: Mapping[str, Any], strict: bool, shard: _Shard) -> None:
    """Record an unreadable image in the shard's ``skipped`` and say so (``strict``: stop instead).

    Raises:
      DatasetError: under ``strict``.
    """
    problem = item["problem"]
    if strict:
        raise DatasetError(
            f"{problem['file']}: {problem['reason']}: {problem['detail']} (stopped by --strict; "
            "without it the image is skipped, logged and counted)"
        )
    shard.skipped[item["key"]] = {**problem, "file": item["file"], "path": problem["file"]}
    shard.entries.pop(item["key"], None)
    print(
        f"skipped {item['file']}: {problem['reason']}: {problem['detail']}",
        file=sys.stderr,
        flush=True,
    )


def _merge(
    s: CacheSettings,
    root: Path,
    meta: Dict[str, Any],
    images: int,
    reports: List[Dict[str, Any]],
    world_size: int,
    swept: List[Path],
    started: float,
) -> Dict[str, Any]:
    """Rank 0: merge the ranks' index parts into ``index.json`` and their reports into the run's
    report (``cache_report.json``, also returned)."""
    merged_entries, merged_skipped = read_index(root)
    write_json(root / "index.json", {"entries": merged_entries, "skipped": merged_skipped})
    for part in (root / "index").glob("rank-*.json"):
        part.unlink()
    total: Dict[str, Any] = {"already": 0, "adopted": 0, "cached": 0, "repaired": {}, "skipped": {}}
    for r in reports:
        for k in ("already", "adopted", "cached"):
            total[k] += r[k]
        total["repaired"].update(r["repaired"])
        total["skipped"].update(r["skipped"])
    wall = time.perf_counter() - started
    result = {
        "cache": str(root),
        "teacher": meta["teacher"]["name"] + ":" + meta["teacher"]["checkpoint"],
        "teacher_sha256": meta["teacher"]["sha256"],
        "images": images,
        "entries": len(merged_entries),
        **total,
        "verified": s.verify,
        "world_size": world_size,
        "stale_temps_removed": len(swept),
        "wall_s": wall,
        "images_per_s": total["cached"] / wall if wall > 0 else None,
    }
    write_json(root / "cache_report.json", result)
    if s.progress:
        print(
            f"teacher cache {root}: {len(merged_entries)} of {images} images cached "
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


def _store(shard: _Shard, item: Mapping[str, Any], embedding: Tensor) -> None:
    """Write the entry of one image (``embedding``: C x g x g fp16) and record it in the shard's
    ``entries``."""
    key, root, config = item["key"], shard.root, shard.config
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
        "teacher": shard.sha,
        "checksum": checksum,
    }
    _write_entry(path, payload)
    shard.entries[key] = _index_record(payload, path, root)
    shard.skipped.pop(key, None)


def _flush_best_effort(shard: _Shard) -> None:
    """Write the index part if the disk still allows it; the entries are safe either way (a new
    run adopts entry files that the index misses)."""
    try:
        shard.flush()
    except OSError:
        pass
