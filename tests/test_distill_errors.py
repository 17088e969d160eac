"""Bad input to distillation: a clear error naming the problem, before any work is done."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

from biglittle_sam.config import SAM_CONFIGS
from biglittle_sam.data import ShapesDataset
from biglittle_sam.distill import CacheError, DistillSettings, TeacherCache, run_distillation
from biglittle_sam.train import build_student, student_config
from tools import distill

from .train_fixtures import STUDENT_OVERRIDES, build_cache, fast_train, save_teacher, teacher_config


def _settings(out: Path, shapes: ShapesDataset, cache: Path, teacher: Path, **kw: Any):
    base = dict(
        cache=str(cache),
        images=str(shapes.coco_images),
        student="bl_tiny",
        teacher_checkpoint=str(teacher),
        student_overrides=STUDENT_OVERRIDES,
        train=fast_train(out, steps=2),
    )
    base.update(kw)
    return DistillSettings(**base)  # type: ignore[arg-type]


def test_student_of_another_size_than_its_teacher(tiny_sam_checkpoint: Path) -> None:
    with pytest.raises(ValueError, match="bl_b inherits from vit_b.*vit_tiny.*--student bl_tiny"):
        build_student("bl_b", tiny_sam_checkpoint)
    with pytest.raises(ValueError, match="unknown student 'vit_b'"):
        student_config("vit_b", SAM_CONFIGS["vit_b"])
    # A custom teacher size gives a student of that shape; the registered one, the registered.
    custom = student_config("bl_tiny", teacher_config())
    assert (custom.embed_dim, custom.img_size, custom.little_dim) == (32, 64, 8)
    assert student_config("bl_tiny", SAM_CONFIGS["vit_tiny"]).little_dim == 16


def test_distill_cli_reports_a_size_mismatch_before_any_work(
    tmp_path: Path,
    shapes: ShapesDataset,
    tiny_sam_checkpoint: Path,
    capsys: pytest.CaptureFixture,
    one_thread,
) -> None:
    cache = tmp_path / "cache"
    build_cache(shapes.coco_images, tiny_sam_checkpoint, cache, limit=2)  # type: ignore[arg-type]
    out = tmp_path / "run"
    args = ["--cache", str(cache), "--images", str(shapes.coco_images), "--limit", "2",
            "--teacher-checkpoint", str(tiny_sam_checkpoint), "--out-dir", str(out)]  # fmt: skip
    with pytest.raises(SystemExit) as info:
        distill.main(args + ["--student", "bl_b"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "bl_b inherits from vit_b" in err and "vit_tiny" in err
    assert not out.exists()
    # The matching student starts (and is checked against the cache's 256 px embeddings).
    result = distill.main(args + ["--student", "bl_tiny", "--steps", "1", "--batch-size", "2",
                                  "--num-workers", "0", "--no-progress"])  # fmt: skip
    assert result.finished


def test_cache_of_another_teacher_is_refused(
    tmp_path: Path, shapes: ShapesDataset, teacher_cache: Path, one_thread
) -> None:
    other = save_teacher(tmp_path / "other.pth", seed=7)
    settings = _settings(tmp_path / "run", shapes, teacher_cache, other)
    with pytest.raises(CacheError, match="come from teacher vit_tiny:teacher.pth"):
        run_distillation(settings)
    assert not (tmp_path / "run").exists()


def test_student_must_fit_the_cached_embeddings(teacher_cache: Path) -> None:
    cache = TeacherCache.open(teacher_cache)
    cache.check_student(student_config("bl_tiny", teacher_config()))
    with pytest.raises(CacheError, match=r"holds 64 px inputs .* student 'bl_tiny' takes 128"):
        cache.check_student(student_config("bl_tiny", teacher_config(img_size=128)))
    with pytest.raises(CacheError, match="no cache|not found"):
        TeacherCache.open(teacher_cache / "nope")


def test_incomplete_cache_is_refused_unless_allowed(
    tmp_path: Path, shapes: ShapesDataset, teacher_ckpt: Path, one_thread
) -> None:
    cache = tmp_path / "cache"
    build_cache(shapes.coco_images, teacher_ckpt, cache, limit=3)  # type: ignore[arg-type]
    settings = _settings(tmp_path / "run", shapes, cache, teacher_ckpt)
    with pytest.raises(CacheError, match="3 of 6 images .* have no cached embedding"):
        run_distillation(settings)
    result = run_distillation(dataclasses.replace(settings, allow_partial_cache=True))
    assert result.finished and len(result.history) == 2


def test_settings_that_cannot_work(
    tmp_path: Path, shapes: ShapesDataset, teacher_cache: Path, teacher_ckpt: Path, one_thread
) -> None:
    with pytest.raises(ValueError, match="init 'none' leaves the P-blocks random"):
        run_distillation(
            _settings(tmp_path / "a", shapes, teacher_cache, teacher_ckpt, init="none")
        )
    with pytest.raises(ValueError, match="ground-truth masks are needed"):
        run_distillation(_settings(tmp_path / "b", shapes, teacher_cache, teacher_ckpt, phase=2))
    with pytest.raises(ValueError, match="unknown trainable parts"):
        run_distillation(
            _settings(tmp_path / "c", shapes, teacher_cache, teacher_ckpt, train_parts="wings")
        )
    with pytest.raises(ValueError, match="phase must be 1 or 2"):
        _settings(tmp_path / "d", shapes, teacher_cache, teacher_ckpt, phase=3)
    with pytest.raises(FileNotFoundError, match="teacher checkpoint not found"):
        run_distillation(_settings(tmp_path / "e", shapes, teacher_cache, tmp_path / "missing.pth"))


def test_distilling_without_teacher_init_trains_the_whole_encoder(
    tmp_path: Path, shapes: ShapesDataset, teacher_cache: Path, teacher_ckpt: Path, one_thread
) -> None:
    settings = _settings(
        tmp_path / "run", shapes, teacher_cache, teacher_ckpt, init="none", train_parts="encoder"
    )
    result = run_distillation(settings)
    assert result.finished
    teacher = torch.load(teacher_ckpt, map_location="cpu", weights_only=True)["model"]
    init = torch.load(tmp_path / "run" / "init.pth", map_location="cpu", weights_only=True)
    key = "image_encoder.blocks.0.attn.qkv.weight"
    assert not torch.equal(init["model"][key], teacher[key])  # P-blocks did not come from it
    dec = "mask_decoder.iou_token.weight"
    assert torch.equal(init["model"][dec], teacher[dec])  # the decoder did
