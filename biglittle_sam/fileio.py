"""Atomic file writes: nothing already written is lost, and no half-written file appears.

Every checkpoint, cache entry and report goes through :func:`atomic_open`: the data is written to a
temporary file in the target's folder, flushed and fsynced, then renamed over the target. An
interrupted write (a crash, a full disk) leaves the previous file untouched.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator, Union

__all__ = ["atomic_open", "atomic_write_json"]

PathLike = Union[str, os.PathLike]


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
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file open()'s mode
        text_encoding = (encoding or "utf-8") if mode == "w" else None
        with os.fdopen(fd, mode, encoding=text_encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


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
