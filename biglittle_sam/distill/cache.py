"""The teacher embedding cache: one fp16 embedding per image, computed once, checked, resumable.

Layout under the cache folder::

    cache.json                 teacher (name, file, SHA-256, config), input size, embedding shape
    entries/<xy>/<key>.pt      one image: {"embedding": C x g x g fp16, "key", "image_id", "file",
                               "input_size", "original_size", "valid", "teacher", "checksum"}
    index.json                 key -> {file, image_id, input_size, original_size, valid, checksum,
                               path}, plus the images skipped as unreadable and why
    index/rank-R-of-W.json     a rank's part of the index while a run is in progress

- Every file is written to a temporary name and renamed, so an interrupted run (or a full disk)
  never leaves a half-written entry under a real name, and an entry once written stays valid.
- Resumable: images with an entry are skipped. An entry file that a crash kept out of the index is
  checked (checksum) and adopted.
- Sharded under torchrun: rank r of W caches images r, r + W, ...; rank 0 merges the index.
- ``verify``: every entry of the source is loaded and checked (readable, shape, dtype, checksum,
  finite values, teacher); bad ones are recomputed.
- The key of an image is :func:`biglittle_sam.train.data.image_key` of its file name, so a cache
  made from a folder serves training on the COCO or SA-1B annotations of the same images.
"""

from __future__ import annotations

import datetime
import errno
import hashlib
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..checkpoint import CheckpointError, atomic_save, read_checkpoint
from ..config import BigLittleConfig, SamViTConfig, config_to_dict
from ..data.records import DatasetError, EvalDataset, ImageProblemError
from ..fidelity import valid_embedding_size
from ..runtime.amp import autocast_context, resolve_amp
from ..runtime.distributed import DistContext, init_distributed
from ..runtime.progress import Progress
from ..train.data import build_image_source, image_key, preprocess_image, source_file_names
from ..train.logging import format_duration
from ..train.models import file_sha256, load_sam

__all__ = [
    "CACHE_FORMAT",
    "CACHE_VERSION",
    "CacheError",
    "CacheWriteError",
    "CacheSettings",
    "TeacherCache",
    "cache_teacher_embeddings",
    "entry_problem",
    "embedding_checksum",
]

CACHE_FORMAT = "biglittle-sam-teacher-cache"
ENTRY_FORMAT = "biglittle-sam-teacher-embedding"
CACHE_VERSION = 1
PathLike = Union[str, os.PathLike]


class CacheError(ValueError):
    """A cache that cannot be used as asked: missing, from another teacher, incomplete, corrupt."""


class CacheWriteError(OSError):
    """Writing the cache failed (for example, the disk is full). Entries written before are kept."""


def embedding_checksum(embedding: Tensor) -> str:
    """SHA-256 of an embedding's bytes (fp16, C order)."""
    return hashlib.sha256(embedding.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def _write_json(path: Path, payload: Any) -> None:
    """JSON written atomically: a temporary file in the same folder, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CacheError(f"{path}: {what} not found") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CacheError(f"{path}: cannot read the {what}: {e}") from None


def _write_entry(path: Path, payload: Dict[str, Any]) -> None:
    """One entry, atomically (a module-level function so tests can make it fail)."""
    atomic_save(payload, path)


def _plain_id(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        return str(value)
    return value


@dataclass(frozen=True)
class TeacherInfo:
    """Which teacher made a cache."""

    name: str  # the teacher's config name (vit_b, vit_h, vit_tiny, ...)
    checkpoint: str  # the teacher checkpoint's file name
    sha256: str  # the teacher checkpoint's SHA-256: the teacher's identity
    config: Dict[str, Any]

    @property
    def tag(self) -> str:
        return f"{self.name}:{self.checkpoint}"


class TeacherCache:
    """A cache folder opened for reading (see the module docstring for its layout)."""

    def __init__(
        self,
        root: Path,
        meta: Dict[str, Any],
        entries: Dict[str, Dict[str, Any]],
        skipped: Dict[str, Dict[str, Any]],
    ) -> None:
        self.root = root
        self.meta = meta
        self.entries = entries
        self.skipped = skipped

    # -- opening --------------------------------------------------------------------------
    @classmethod
    def open(cls, root: PathLike) -> "TeacherCache":
        """Read ``cache.json`` and the index (merged index plus any per-rank parts).

        Raises:
          CacheError: no cache there, or one of another format or version.
        """
        root = Path(root)
        if not root.is_dir():
            raise CacheError(
                f"{root}: teacher cache folder not found; make it with tools/cache_teacher.py"
            )
        meta = cls.read_meta(root)
        entries, skipped = _read_index(root)
        return cls(root, meta, entries, skipped)

    @staticmethod
    def read_meta(root: Path) -> Dict[str, Any]:
        meta = _read_json(root / "cache.json", "teacher cache description (cache.json)")
        if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT:
            raise CacheError(
                f"{root / 'cache.json'}: not a teacher cache description (format "
                f"'{CACHE_FORMAT}' expected)"
            )
        if meta.get("version") != CACHE_VERSION:
            raise CacheError(
                f"{root / 'cache.json'}: cache version {meta.get('version')} is not supported "
                f"(expected {CACHE_VERSION}); make the cache again"
            )
        return meta

    # -- what it holds --------------------------------------------------------------------
    @property
    def teacher(self) -> TeacherInfo:
        t = self.meta["teacher"]
        return TeacherInfo(t["name"], t["checkpoint"], t["sha256"], dict(t.get("config") or {}))

    @property
    def img_size(self) -> int:
        return int(self.meta["img_size"])

    @property
    def embedding_shape(self) -> Tuple[int, int, int]:
        """(C, g, g) of every entry."""
        c, h, w = self.meta["embedding_shape"]
        return int(c), int(h), int(w)

    def entry_path(self, key: str) -> Path:
        return entry_path(self.root, key)

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    # -- checks ---------------------------------------------------------------------------
    def check_teacher(self, sha256: str, what: str) -> None:
        """CacheError unless this cache was made by the teacher whose checkpoint hashes to
        ``sha256`` (``what`` names that checkpoint in the message)."""
        if sha256 != self.teacher.sha256:
            t = self.teacher
            raise CacheError(
                f"{self.root}: the cached embeddings come from teacher {t.tag} (SHA-256 "
                f"{t.sha256[:12]}...), but {what} has SHA-256 {sha256[:12]}...: a student "
                "distilled from these embeddings would learn another teacher. Use the cache of "
                "this teacher, or the teacher checkpoint this cache was made with"
            )

    def check_student(self, config: SamViTConfig) -> None:
        """CacheError unless a model of ``config`` takes the cache's input size and produces its
        embedding shape."""
        shape = (config.out_chans, config.grid_size, config.grid_size)
        if config.img_size != self.img_size or shape != self.embedding_shape:
            raise CacheError(
                f"{self.root}: holds {self.img_size} px inputs and embeddings of shape "
                f"{self.embedding_shape}, but the student '{config.name}' takes {config.img_size} "
                f"px and produces {shape}; the student must match its teacher's input and "
                "embedding"
            )

    def load_embedding(self, key: str) -> Tensor:
        """The fp16 C x g x g embedding of image ``key``.

        Raises:
          CacheError: no entry, or an entry that does not read or does not fit (pointing to
            ``--verify``, which recomputes it).
        """
        if key not in self.entries:
            raise CacheError(f"{self.root}: no cached embedding for image key {key!r}")
        path = self.entry_path(key)
        try:
            payload = read_checkpoint(path)
        except (FileNotFoundError, CheckpointError) as e:
            raise CacheError(
                f"{e}; run tools/cache_teacher.py --verify on {self.root} to recompute it"
            ) from None
        emb = payload.get("embedding") if isinstance(payload, dict) else None
        if (
            not isinstance(emb, Tensor)
            or tuple(emb.shape) != self.embedding_shape
            or emb.dtype != torch.float16
        ):
            raise CacheError(
                f"{path}: not a {self.embedding_shape} fp16 embedding; run tools/cache_teacher.py "
                f"--verify on {self.root} to recompute it"
            )
        return emb


def entry_path(root: Path, key: str) -> Path:
    """``entries/<last two hex digits of the key>/<key>.pt``: at most 256 entries per folder per
    65k images."""
    return root / "entries" / key[-2:] / f"{key}.pt"


def _read_index(root: Path) -> Tuple[Dict[str, Dict[str, Any]], Dict[str, Dict[str, Any]]]:
    entries: Dict[str, Dict[str, Any]] = {}
    skipped: Dict[str, Dict[str, Any]] = {}
    files = []
    if (root / "index.json").is_file():
        files.append(root / "index.json")
    if (root / "index").is_dir():
        files.extend(sorted((root / "index").glob("rank-*.json")))
    for path in files:
        data = _read_json(path, "cache index")
        if not isinstance(data, dict):
            raise CacheError(f"{path}: a cache index must be a JSON object with 'entries'")
        for key, rec in (data.get("entries") or {}).items():
            entries[key] = rec
            skipped.pop(key, None)
        for key, rec in (data.get("skipped") or {}).items():
            if key not in entries:
                skipped[key] = rec
    return entries, skipped


def entry_problem(
    path: Path, key: str, shape: Tuple[int, int, int], teacher_sha256: str
) -> Optional[str]:
    """What is wrong with one entry file, or None when it is complete and correct.

    Checked: it exists and loads (``weights_only``), it is an entry for ``key`` by this teacher,
    the embedding is a ``shape`` fp16 tensor, its checksum matches, and every value is finite.
    """
    if not path.is_file():
        return "missing"
    try:
        payload = read_checkpoint(path)
    except CheckpointError as e:
        return f"unreadable ({str(e).split(': ', 1)[-1][:120]})"
    if not isinstance(payload, dict) or payload.get("format") != ENTRY_FORMAT:
        return "not a cache entry"
    if payload.get("key") != key:
        return f"holds image {payload.get('key')!r}, not {key!r}"
    if payload.get("teacher") != teacher_sha256:
        return "made by another teacher"
    emb = payload.get("embedding")
    if not isinstance(emb, Tensor) or tuple(emb.shape) != shape or emb.dtype != torch.float16:
        got = f"{tuple(emb.shape)} {emb.dtype}" if isinstance(emb, Tensor) else type(emb).__name__
        return f"embedding is {got}, expected {shape} float16"
    if embedding_checksum(emb) != payload.get("checksum"):
        return "checksum mismatch (corrupted)"
    if not bool(torch.isfinite(emb).all()):
        return "non-finite values (NaN or inf)"
    return None


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
    if ctx.is_main:
        try:
            _prepare_folder(root, meta)
        except BaseException as e:  # every rank must learn it, or the others wait forever
            error = e
    failed = ctx.broadcast(None if error is None else str(error))
    if error is not None:
        raise error
    if failed is not None:
        raise CacheError(failed)
    sha = meta["teacher"]["sha256"]
    shape: Tuple[int, int, int] = tuple(meta["embedding_shape"])  # type: ignore[assignment]
    entries, skipped = _read_index(root)
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
    merged_entries, merged_skipped = _read_index(root)
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
        "wall_s": wall,
        "images_per_s": total["cached"] / wall if wall > 0 else None,
    }
    _write_json(root / "cache_report.json", result)
    if s.progress:
        print(
            f"teacher cache {root}: {len(merged_entries)} of {len(source)} images cached "
            f"({total['cached']} now, {total['already']} kept, {total['adopted']} adopted, "
            f"{len(total['repaired'])} repaired, {len(total['skipped'])} skipped) in "
            f"{format_duration(wall)}",
            flush=True,
        )
    return result


def _record_from_file(path: Path, root: Path) -> Dict[str, Any]:
    payload = read_checkpoint(path)
    return {
        "file": payload["file"],
        "image_id": payload["image_id"],
        "input_size": list(payload["input_size"]),
        "original_size": list(payload["original_size"]),
        "valid": list(payload["valid"]),
        "checksum": payload["checksum"],
        "path": str(path.relative_to(root)),
    }


def _store(
    root: Path,
    item: Mapping[str, Any],
    embedding: Tensor,
    sha: str,
    config: SamViTConfig,
    entries: Dict[str, Dict[str, Any]],
    skipped: Dict[str, Dict[str, Any]],
) -> None:
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
    entries[key] = {
        "file": item["file"],
        "image_id": item["image_id"],
        "input_size": list(item["input_size"]),
        "original_size": list(item["original_size"]),
        "valid": valid,
        "checksum": checksum,
        "path": str(path.relative_to(root)),
    }
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
