"""The teacher embedding cache's format: its layout, opening it, and checking its entries.

Layout under the cache folder::

    cache.json                 teacher (name, file, SHA-256, config), input size, embedding shape
    entries/<xy>/<key>.pt      one image: {"embedding": C x g x g fp16, "key", "image_id", "file",
                               "input_size", "original_size", "valid", "teacher", "checksum"}
    index.json                 key -> {file, image_id, input_size, original_size, valid, checksum,
                               path}, plus the images skipped as unreadable and why
    index/rank-R-of-W.json     a rank's part of the index while a run is in progress

Every file is written under a temporary name (``.<name>.<random>.tmp`` in the same folder) and
renamed, so an entry under its real name is always complete; the writer (:mod:`.writer`) sweeps
the temporary files a killed run left. The key of an image is
:func:`biglittle_sam.train.data.image_key` of its file name, so a cache made from a folder serves
training on the COCO or SA-1B annotations of the same images.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch
from torch import Tensor

from ...checkpoint import CheckpointError, read_checkpoint
from ...config import SamViTConfig

__all__ = [
    "CACHE_FORMAT",
    "CACHE_VERSION",
    "ENTRY_FORMAT",
    "CacheError",
    "TeacherCache",
    "TeacherInfo",
    "embedding_checksum",
    "entry_path",
    "entry_problem",
    "read_index",
    "read_json",
]

CACHE_FORMAT = "biglittle-sam-teacher-cache"
ENTRY_FORMAT = "biglittle-sam-teacher-embedding"
CACHE_VERSION = 1
PathLike = Union[str, os.PathLike]


class CacheError(ValueError):
    """A cache that cannot be used as asked: missing, from another teacher, incomplete, corrupt."""


def embedding_checksum(embedding: Tensor) -> str:
    """SHA-256 of an embedding's bytes (fp16, C order)."""
    return hashlib.sha256(embedding.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def read_json(path: Path, what: str) -> Any:
    """A JSON file of the cache (``what`` names it); CacheError when missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CacheError(f"{path}: {what} not found") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CacheError(f"{path}: cannot read the {what}: {e}") from None


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
        entries, skipped = read_index(root)
        return cls(root, meta, entries, skipped)

    @staticmethod
    def read_meta(root: Path) -> Dict[str, Any]:
        meta = read_json(root / "cache.json", "teacher cache description (cache.json)")
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


def read_index(root: Path) -> Tuple[Dict[str, Dict[str, Any]], Dict[str, Dict[str, Any]]]:
    """(entries, skipped) of the merged index and any per-rank parts, later parts winning."""
    entries: Dict[str, Dict[str, Any]] = {}
    skipped: Dict[str, Dict[str, Any]] = {}
    files = []
    if (root / "index.json").is_file():
        files.append(root / "index.json")
    if (root / "index").is_dir():
        files.extend(sorted((root / "index").glob("rank-*.json")))
    for path in files:
        data = read_json(path, "cache index")
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
