"""Atomic file writes: nothing already written is lost, and no half-written file appears.

Every checkpoint, cache entry and report goes through :func:`atomic_open`: the data is written to a
temporary file in the target's folder, flushed and fsynced, then renamed over the target. An
interrupted write (a crash, a full disk) leaves the previous file untouched.

A write that fails (a full disk, a quota, an I/O error) raises :class:`FileWriteError`, whatever the
writer raised: ``torch.save`` reports a full disk as a ``RuntimeError`` from its zip writer
("unexpected pos ..."), ``json.dump`` as an ``OSError``. The error names the file and the space left
on its disk; the temporary file is removed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator, List, Optional, Union

__all__ = [
    "atomic_open",
    "atomic_write_json",
    "sweep_temp_files",
    "FileWriteError",
    "TEMP_SUFFIX",
    "temp_prefix",
]

PathLike = Union[str, os.PathLike]

# The temporary file of a write to ``NAME`` is ``.NAME.<random>.tmp`` in the same folder.
TEMP_SUFFIX = ".tmp"


def temp_prefix(name: str) -> str:
    """The prefix of the temporary files :func:`atomic_open` makes for a target called ``name``."""
    return f".{name}."


class FileWriteError(OSError):
    """Writing a file failed (a full disk, a quota, an I/O error); the previous file is kept.

    Attributes:
      path: the file that could not be written.
      free_bytes: the space left on its disk when the write failed (None when unknown).
    """

    def __init__(self, code: int, message: str, path: Path, free_bytes: Optional[int]) -> None:
        super().__init__(code, message)
        self.path = path
        self.free_bytes = free_bytes

    def __str__(self) -> str:
        return str(self.strerror)


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; on a clean exit it replaces ``path``.

    Arguments:
      path: the final file name (its folder is created).
      mode: "wb" or "w".
      encoding: for text mode (default utf-8).
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open writes whole files: mode must be 'wb' or 'w', got {mode!r}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=temp_prefix(target.name), suffix=TEMP_SUFFIX, dir=target.parent
    )
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file open()'s mode
        text_encoding = (encoding or "utf-8") if mode == "w" else None
        with os.fdopen(fd, mode, encoding=text_encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as e:
        cause = _write_failure(e, tmp)
        free = _free_bytes(target.parent) if cause is not None else None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if cause is None:
            raise
        raise _write_error(target, cause, free) from e


def _write_failure(error: BaseException, tmp: str) -> Optional[BaseException]:
    """The error that says the write itself failed, or None for any other exception (a caller's
    error, an interrupt), which passes through unchanged.

    An ``OSError`` anywhere in the chain counts (torch raises its ``RuntimeError`` while handling
    the ``OSError`` of the file's ``write``) unless it names another file than ``tmp``, and so does
    the zip writer's own ``RuntimeError``, which older torch versions raise without the ``OSError``
    in the chain.
    """
    if not isinstance(error, Exception):
        return None
    seen = set()
    current: Optional[BaseException] = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError):
            return current if current.filename in (None, tmp) else None
        current = current.__cause__ or current.__context__
    text = str(error)
    if isinstance(error, RuntimeError) and any(
        marker in text for marker in ("unexpected pos", "PytorchStreamWriter", "file write failed")
    ):
        return error
    return None


def _free_bytes(folder: Path) -> Optional[int]:
    with contextlib.suppress(OSError):
        return shutil.disk_usage(folder).free
    return None


def _size(n: int) -> str:
    """``n`` bytes in the largest unit that keeps it >= 1 (``0 B``, ``812 KB``, ``3.2 GB``)."""
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" or value >= 100 else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"


def _write_error(target: Path, cause: BaseException, free: Optional[int]) -> FileWriteError:
    code = getattr(cause, "errno", None)
    if not code:
        code = errno.ENOSPC if free is not None and free < 1_000_000 else errno.EIO
    reason = os.strerror(code)
    if not isinstance(cause, OSError) or not cause.errno:
        reason += f" ({type(cause).__name__}: {str(cause).strip().splitlines()[-1][:200]})"
    space = f"{_size(free)} free" if free is not None else "free space unknown"
    return FileWriteError(
        code,
        f"could not write {target}: {reason}; {space} on the disk that holds {target.parent}. "
        "The previous file, if any, is kept and the partial file was removed",
        target,
        free,
    )


def _umask() -> int:
    """The process umask.

    Linux reports it in ``/proc/self/status``, which reads it without changing it. Elsewhere it is
    read by setting it and restoring it at once, which another thread creating a file in between
    would see (the demo serves several sessions from threads).
    """
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_json(path: PathLike, payload: Any, indent: int = 1) -> Path:
    """Write ``payload`` as JSON (plus a final newline) through :func:`atomic_open`."""
    with atomic_open(path, "w") as f:
        json.dump(payload, f, indent=indent)
        f.write("\n")
    return Path(path)


def sweep_temp_files(folder: PathLike, older_than: float) -> List[Path]:
    """Remove the temporary files that writes killed mid-way left in ``folder`` (not below it).

    A temporary file is named ``.NAME.<anything>.tmp`` (see :func:`temp_prefix`); only those last
    modified before ``older_than`` (a ``time.time()`` value, normally when the run began) are
    removed, so a write in progress is never touched.

    Returns:
      The removed files, sorted.
    """
    removed: List[Path] = []
    root = Path(folder)
    if not root.is_dir():
        return removed
    for path in root.iterdir():
        if not (path.name.startswith(".") and path.name.endswith(TEMP_SUFFIX)):
            continue
        with contextlib.suppress(FileNotFoundError):
            if path.is_file() and path.stat().st_mtime < older_than:
                path.unlink()
                removed.append(path)
    return sorted(removed)
