"""The teacher embedding cache: contents, resume, verify and repair, bad input, full disk."""

from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path

import pytest
import torch

from biglittle_sam.build_sam import build_sam_from_config
from biglittle_sam.checkpoint import atomic_save, read_checkpoint
from biglittle_sam.data import DatasetError, ShapesDataset
from biglittle_sam.distill import (
    CacheError,
    CacheWriteError,
    TeacherCache,
    embedding_checksum,
    entry_problem,
)
from biglittle_sam.distill.cache import writer as cache_writer
from biglittle_sam.train import image_key, load_sam, preprocess_image
from biglittle_sam.train.data import source_file_names
from tools import cache_teacher

from .train_fixtures import build_cache, make_shapes, save_teacher, teacher_config


@pytest.fixture()
def data(tmp_path: Path) -> ShapesDataset:
    return make_shapes(tmp_path / "shapes", num_images=5)


@pytest.fixture()
def teacher(tmp_path: Path) -> Path:
    return save_teacher(tmp_path / "teacher.pth")


def _keys(data: ShapesDataset):
    from biglittle_sam.train import build_image_source

    return [image_key(n) for n in source_file_names(build_image_source(str(data.coco_images)))]


def test_cache_holds_the_teacher_embedding_of_every_image(
    tmp_path: Path, data: ShapesDataset, teacher: Path, one_thread
) -> None:
    out = tmp_path / "cache"
    report = cache_teacher.main(
        ["--images", str(data.coco_images), "--teacher-checkpoint", str(teacher),
         "--out-dir", str(out), "--num-workers", "0", "--batch-size", "2", "--no-progress"]
    )  # fmt: skip
    assert report is not None and report["cached"] == 5 and report["entries"] == 5
    cache = TeacherCache.open(out)
    assert cache.embedding_shape == (16, 8, 8) and cache.img_size == 64
    assert cache.teacher.name == "vit_tiny" and cache.teacher.checkpoint == "teacher.pth"
    assert len(cache) == 5 and not cache.skipped
    # An entry equals what SAM's own preprocessing and the teacher's encoder give, in fp16.
    sam, _, _ = load_sam(teacher)
    from PIL import Image

    name = sorted(p.name for p in data.coco_images.iterdir())[1]  # type: ignore[union-attr]
    image = __import__("numpy").asarray(Image.open(data.coco_images / name).convert("RGB"))
    x, input_size = preprocess_image(image, 64)
    with torch.no_grad():
        expected = sam.image_encoder(x[None])[0].half()  # (16, 8, 8)
    key = image_key(name)
    assert torch.allclose(cache.load_embedding(key).float(), expected.float(), atol=1e-3)
    record = cache.entries[key]
    assert record["input_size"] == list(input_size) and record["file"] == name
    rows, cols = record["valid"]
    assert (rows, cols) == (-(-input_size[0] // 8), -(-input_size[1] // 8))
    assert entry_problem(cache.entry_path(key), key, (16, 8, 8), cache.teacher.sha256) is None
    # An entry holds its own embedding, not the storage of the batch it was computed in (2 images
    # here): 16 x 8 x 8 fp16 is 2 KB, the rest of the file is metadata.
    assert cache.entry_path(key).stat().st_size < 2 * 16 * 8 * 8 * 2
    # Resumable: a second run computes nothing.
    again = build_cache(data.coco_images, teacher, out)  # type: ignore[arg-type]
    assert again["cached"] == 0 and again["already"] == 5
    assert json.loads((out / "cache_report.json").read_text())["already"] == 5


def test_verify_finds_and_repairs_bad_entries(
    tmp_path: Path, data: ShapesDataset, teacher: Path, one_thread
) -> None:
    out = tmp_path / "cache"
    build_cache(data.coco_images, teacher, out)  # type: ignore[arg-type]
    cache = TeacherCache.open(out)
    keys = _keys(data)
    good = {k: cache.load_embedding(k).clone() for k in keys}
    truncated, flipped, nan, missing = (cache.entry_path(k) for k in keys[:4])
    raw = truncated.read_bytes()
    truncated.write_bytes(raw[: len(raw) // 2])
    payload = read_checkpoint(flipped)
    payload["embedding"] = payload["embedding"].clone()
    payload["embedding"][0, 0, 0] += 1.0  # bytes changed, checksum not updated
    atomic_save(payload, flipped)
    payload = read_checkpoint(nan)
    payload["embedding"] = payload["embedding"].clone()
    payload["embedding"][1, 2, 3] = float("nan")
    payload["checksum"] = embedding_checksum(payload["embedding"])
    atomic_save(payload, nan)
    missing.unlink()
    sha = cache.teacher.sha256
    problems = [entry_problem(p, k, (16, 8, 8), sha) for p, k in zip(
        (truncated, flipped, nan, missing), keys[:4])]  # fmt: skip
    assert problems[0].startswith("unreadable") and problems[1].startswith("checksum")
    assert problems[2].startswith("non-finite") and problems[3] == "missing"
    # Without --verify only the missing file is noticed; --verify finds and repairs all four.
    plain = build_cache(data.coco_images, teacher, out)  # type: ignore[arg-type]
    assert plain["cached"] == 1
    missing.unlink()
    report = build_cache(data.coco_images, teacher, out, verify=True)  # type: ignore[arg-type]
    assert report["cached"] == 4 and report["already"] == 1
    assert set(report["repaired"]) == set(keys[:4])
    assert report["repaired"][keys[1]].startswith("checksum")
    cache = TeacherCache.open(out)
    for k in keys:
        assert entry_problem(cache.entry_path(k), k, (16, 8, 8), sha) is None
        assert torch.equal(cache.load_embedding(k), good[k])


def test_unreadable_image_is_skipped_and_counted_or_fails_with_strict(
    tmp_path: Path, data: ShapesDataset, teacher: Path, one_thread
) -> None:
    bad = sorted(data.coco_images.iterdir())[2]  # type: ignore[union-attr]
    bad.write_bytes(b"this is not a jpeg")
    with pytest.raises(DatasetError, match=f"{bad.name}.*corrupt.*--strict"):
        build_cache(data.coco_images, teacher, tmp_path / "strict", strict=True)  # type: ignore
    report = build_cache(data.coco_images, teacher, tmp_path / "cache")  # type: ignore[arg-type]
    assert report["cached"] == 4 and len(report["skipped"]) == 1
    (skipped,) = report["skipped"].values()
    assert skipped["file"] == bad.name and skipped["reason"] == "corrupt"
    cache = TeacherCache.open(tmp_path / "cache")
    assert image_key(bad.name) in cache.skipped and len(cache) == 4


def test_a_different_teacher_is_refused_before_any_work(
    tmp_path: Path, data: ShapesDataset, teacher: Path, one_thread, monkeypatch
) -> None:
    out = tmp_path / "cache"
    build_cache(data.coco_images, teacher, out, limit=2)  # type: ignore[arg-type]
    other = save_teacher(tmp_path / "other.pth", seed=1)
    calls = []
    monkeypatch.setattr(cache_writer, "_write_entry", lambda *a: calls.append(a))
    with pytest.raises(CacheError, match="already holds embeddings of teacher vit_tiny:teacher"):
        build_cache(data.coco_images, other, out)  # type: ignore[arg-type]
    assert not calls
    bigger = save_teacher(tmp_path / "t128.pth", img_size=128)
    with pytest.raises(CacheError, match="another --out"):
        build_cache(data.coco_images, bigger, out)  # type: ignore[arg-type]
    # A big.LITTLE model is not a teacher.
    config = teacher_config()
    from biglittle_sam.checkpoint import save_model_checkpoint
    from biglittle_sam.train import student_config

    student = student_config("bl_tiny", config, {"little_dim": 8})
    bl = save_model_checkpoint(tmp_path / "bl.pth", build_sam_from_config(student), student)
    with pytest.raises(CacheError, match="must be a plain SAM"):
        build_cache(data.coco_images, bl, tmp_path / "bl_cache")  # type: ignore[arg-type]


def test_running_out_of_disk_loses_nothing_already_written(
    tmp_path: Path, data: ShapesDataset, teacher: Path, one_thread, monkeypatch, capsys
) -> None:
    out = tmp_path / "cache"
    real = cache_writer._write_entry
    written = []

    def fill_the_disk(path: Path, payload: dict) -> None:
        if len(written) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, payload)
        written.append(payload["key"])

    monkeypatch.setattr(cache_writer, "_write_entry", fill_the_disk)
    with pytest.raises(SystemExit) as info:
        cache_teacher.main(
            ["--images", str(data.coco_images), "--teacher-checkpoint", str(teacher),
             "--out-dir", str(out), "--num-workers", "0", "--no-progress", "--batch-size", "1"]
        )  # fmt: skip
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "No space left" in err and "2 entries" in err and "complete and kept" in err
    with pytest.raises(CacheWriteError):
        written.clear()
        build_cache(data.coco_images, teacher, tmp_path / "other")  # type: ignore[arg-type]
    monkeypatch.setattr(cache_writer, "_write_entry", real)
    cache = TeacherCache.open(out)
    assert len(written) == 2 and len(cache) == 2
    for key in cache.entries:
        assert entry_problem(cache.entry_path(key), key, (16, 8, 8), cache.teacher.sha256) is None
    assert not list(out.rglob("*.tmp"))  # no half-written file under any name
    # Space is back: the next run keeps the two entries and computes the other three.
    report = build_cache(data.coco_images, teacher, out)  # type: ignore[arg-type]
    assert (report["already"], report["cached"], report["entries"]) == (2, 3, 5)
    # Entry files a lost index does not list are checked and adopted, not recomputed.
    (out / "index.json").unlink()
    report = build_cache(data.coco_images, teacher, out)  # type: ignore[arg-type]
    assert (report["adopted"], report["cached"], report["entries"]) == (5, 0, 5)


def test_two_processes_shard_the_cache_and_merge_one_index(
    tmp_path: Path, data: ShapesDataset, teacher: Path, one_thread
) -> None:
    from biglittle_sam.distill import CacheSettings, cache_teacher_embeddings
    from biglittle_sam.train.launch import launch

    settings = CacheSettings(
        images=str(data.coco_images),
        out=str(tmp_path / "two"),
        teacher_checkpoint=str(teacher),
        device="cpu",
        num_workers=0,
        batch_size=2,
        progress=False,
    )
    report = launch(cache_teacher_embeddings, settings, 2, threads=1)
    assert report["world_size"] == 2 and report["cached"] == 5 and report["entries"] == 5
    assert not list((tmp_path / "two" / "index").glob("*.json"))  # merged into index.json
    build_cache(data.coco_images, teacher, tmp_path / "one")  # type: ignore[arg-type]
    one, two = TeacherCache.open(tmp_path / "one"), TeacherCache.open(tmp_path / "two")
    assert one.entries.keys() == two.entries.keys()
    for key, record in one.entries.items():
        same = {k: v for k, v in record.items() if k != "checksum"}
        assert same == {k: v for k, v in two.entries[key].items() if k != "checksum"}
        a, b = one.load_embedding(key).float(), two.load_embedding(key).float()
        assert torch.allclose(a, b, atol=2e-3, rtol=1e-3)


def _age(path: Path, seconds: float) -> Path:
    """Write ``path`` (a stand-in for a temp file) and date it ``seconds`` from now."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"half an entry")
    when = time.time() + seconds
    os.utime(path, (when, when))
    return path


def test_a_run_and_verify_sweep_the_temp_files_of_a_killed_run(
    tmp_path: Path, data: ShapesDataset, teacher: Path, one_thread
) -> None:
    out = tmp_path / "cache"
    build_cache(data.coco_images, teacher, out, limit=2)  # type: ignore[arg-type]
    key = next(iter(TeacherCache.open(out).entries))
    folder = TeacherCache.open(out).entry_path(key).parent
    # What a SIGKILL mid-write leaves: atomic_open's temp files, dated before this run.
    stale = [
        _age(folder / f".{key}.pt.ab12cd_4.tmp", -3600),
        _age(out / ".index.json.x1y2z3w4.tmp", -60),
        _age(out / "index" / ".rank-00000-of-00002.json.qwertyui.tmp", -60),
    ]
    running = _age(folder / f".{key}.pt.zz99zz99.tmp", 3600)  # newer: a writer still at work
    mine = _age(folder / "notes.tmp", -3600)  # a user's file, not of atomic_open's form
    report = build_cache(data.coco_images, teacher, out)  # type: ignore[arg-type]
    assert report["stale_temps_removed"] == 3 and report["entries"] == 5
    assert not any(p.exists() for p in stale) and running.exists() and mine.exists()
    # --verify sweeps as well.
    again = _age(folder / f".{key}.pt.0a1b2c3d.tmp", -60)
    report = cache_teacher.main(
        ["--images", str(data.coco_images), "--teacher-checkpoint", str(teacher),
         "--out", str(out), "--num-workers", "0", "--verify", "--no-progress"]
    )  # fmt: skip
    assert report["stale_temps_removed"] == 1 and report["already"] == 5 and not again.exists()
    # A run with nothing to sweep says so.
    assert build_cache(data.coco_images, teacher, out)["stale_temps_removed"] == 0  # type: ignore


def test_cache_files_follow_the_umask(
    tmp_path: Path, data: ShapesDataset, teacher: Path, one_thread
) -> None:
    old = os.umask(0o022)
    try:
        build_cache(data.coco_images, teacher, tmp_path / "cache", limit=1)  # type: ignore
    finally:
        os.umask(old)
    cache = TeacherCache.open(tmp_path / "cache")
    written = [tmp_path / "cache" / n for n in ("cache.json", "index.json", "cache_report.json")]
    written += [cache.entry_path(k) for k in cache.entries]
    assert {oct(p.stat().st_mode & 0o777) for p in written} == {"0o644"}
