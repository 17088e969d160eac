"""Atomic writes: an interrupted write leaves the previous file and no temporary file behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from biglittle_sam.fileio import atomic_open, atomic_write_json


def test_interrupted_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "report.json"
    atomic_write_json(target, {"v": 1})
    with pytest.raises(OSError, match="disk full"):
        with atomic_open(target, "w") as f:
            f.write('{"v": 2, "trunc')
            raise OSError("disk full")
    assert json.loads(target.read_text()) == {"v": 1}
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.json"]


def test_binary_write_and_mode_check(tmp_path: Path) -> None:
    with atomic_open(tmp_path / "x.bin") as f:
        f.write(b"\x00\x01")
    assert (tmp_path / "x.bin").read_bytes() == b"\x00\x01"
    with pytest.raises(ValueError, match="'wb' or 'w'"):
        with atomic_open(tmp_path / "y", "a"):
            pass


def test_written_files_get_the_usual_permissions(tmp_path: Path) -> None:
    import os

    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "r.json", {})
    finally:
        os.umask(old)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600
    old = os.umask(0o027)  # the process umask is honoured, not a fixed mode
    try:
        atomic_write_json(tmp_path / "s.json", {})
    finally:
        os.umask(old)
    assert (tmp_path / "s.json").stat().st_mode & 0o777 == 0o640
