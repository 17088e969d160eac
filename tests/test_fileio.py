"""Atomic writes: an interrupted write leaves the previous file and no temporary file behind."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from biglittle_sam.checkpoint import atomic_save
from biglittle_sam.fileio import FileWriteError, atomic_open, atomic_write_json, sweep_temp_files


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


def test_a_failed_write_is_one_clear_error_whatever_the_writer_raised(tmp_path: Path) -> None:
    target = tmp_path / "last.pth"
    atomic_write_json(target, {"v": 1})
    # torch.save reports a full disk as a RuntimeError raised while handling the OSError of write.
    with pytest.raises(FileWriteError) as info:
        with atomic_open(target, "wb") as f:
            f.write(b"PK")
            try:
                raise OSError(errno.ENOSPC, "No space left on device")
            except OSError:
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 7")
    error = info.value
    assert error.errno == errno.ENOSPC and error.path == target
    assert isinstance(error.free_bytes, int)
    text = str(error)
    assert str(target) in text and "No space left on device" in text and " free on " in text
    assert json.loads(target.read_text()) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pth"]
    # Older torch raises the zip writer's error alone.
    with pytest.raises(FileWriteError, match="PytorchStreamWriter failed writing file"):
        with atomic_open(target, "wb"):
            raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")


def test_other_errors_pass_through_unchanged(tmp_path: Path) -> None:
    target = tmp_path / "r.json"
    with pytest.raises(ValueError, match="not serializable"):
        with atomic_open(target, "w"):
            raise ValueError("not serializable")
    with pytest.raises(FileNotFoundError) as info:  # reading another file is not a failed write
        with atomic_open(target, "w"):
            open(tmp_path / "missing.txt")
    assert not isinstance(info.value, FileWriteError)
    assert list(tmp_path.iterdir()) == []


def _mount_tmpfs(folder: Path, size: str) -> None:
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    folder.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")


def test_a_really_full_disk_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    disk = tmp_path / "small_disk"
    _mount_tmpfs(disk, "1m")
    try:
        target = disk / "checkpoints" / "last.pth"
        atomic_save({"step": torch.tensor(1)}, target)
        before = target.read_bytes()
        with pytest.raises(FileWriteError) as info:
            atomic_save({"step": torch.tensor(2), "w": torch.zeros(600_000)}, target)  # 2.4 MB
        error = info.value
        assert error.errno == errno.ENOSPC and error.path == target
        assert str(target) in str(error) and " free on " in str(error)
        assert target.read_bytes() == before
        assert sorted(p.name for p in target.parent.iterdir()) == ["last.pth"]
        with pytest.raises(FileWriteError, match="No space left on device"):
            atomic_write_json(disk / "report.json", {"rows": ["x" * 100] * 20_000})
        assert not (disk / "report.json").exists()
        assert sorted(p.name for p in disk.iterdir()) == ["checkpoints"]
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_training_tools_report_a_failed_write_in_one_line(capsys) -> None:
    from biglittle_sam.train.cli import run_cli

    def work() -> None:
        raise FileWriteError(errno.ENOSPC, "could not write x.pth: No space left", Path("x"), 0)

    with pytest.raises(SystemExit) as info:
        run_cli(work)
    assert info.value.code == 1
    assert capsys.readouterr().err == "error: could not write x.pth: No space left\n"


def test_sweep_removes_only_stale_temporary_files(tmp_path: Path) -> None:
    import time

    old = time.time() - 60
    names = [".last.pth.x1.tmp", ".report.json.abc.tmp", "notes.tmp", "last.pth", ".hidden"]
    for name in names:
        (tmp_path / name).write_text("x")
        os.utime(tmp_path / name, (old, old))
    (tmp_path / ".sub.tmp").mkdir()  # a folder is never removed
    fresh = tmp_path / ".model.pth.now.tmp"
    fresh.write_text("being written")
    removed = sweep_temp_files(tmp_path, older_than=time.time() - 30)
    assert [p.name for p in removed] == [".last.pth.x1.tmp", ".report.json.abc.tmp"]
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == [".hidden", ".model.pth.now.tmp", ".sub.tmp", "last.pth", "notes.tmp"]
    assert sweep_temp_files(tmp_path / "missing", older_than=time.time()) == []
