"""Dense students (issue 31): timm TinyViT / RepViT students matched in MACs to a big.LITTLE
student, saved and reloaded safely, and distilled with ``student="dense"``."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Iterator, List

import pytest
import torch
from torch import nn

from biglittle_sam.build_sam import build_sam_from_config
from biglittle_sam.checkpoint import CheckpointError, read_checkpoint, save_model_checkpoint
from biglittle_sam.config import biglittle_config_for
from biglittle_sam.data import ShapesDataset
from biglittle_sam.distill import run_distillation
from biglittle_sam.distill.students import (
    DENSE,
    DENSE_KEY,
    TimmImageEncoder,
    TimmStudentSpec,
    counted_macs,
    dense_student,
    load_student,
    write_dense_student,
)
from biglittle_sam.flops import encoder_macs
from biglittle_sam.train import build_student
from experiments.proxy.matching import depth_ladder, matched_timm, timm_macs

from .test_distill_errors import _settings
from .train_fixtures import STUDENT_OVERRIDES, teacher_config

pytest.importorskip("timm")

# The test teacher at 64 px, patch 8, widened to 64 and 3 layers (the last global, one in three),
# so that the smallest TinyViT (3.3 MMACs at width 8) fits under its big.LITTLE student's cost.
WIDE = teacher_config(embed_dim=64, depth=3, global_attn_indexes=(2,))
# A RepViT small enough for a few training steps on one thread; the geometry of teacher_ckpt.
SMALL = TimmStudentSpec("repvit", 8, (1, 1, 1, 1), img_size=64, patch_size=8, out_chans=16)


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> Iterator[None]:
    yield


@pytest.mark.parametrize("family", ["tiny_vit", "repvit"])
@pytest.mark.parametrize("ratio", [0.5, 0.25])
def test_timm_students_match_the_biglittle_cost_within_5_percent(family: str, ratio: float) -> None:
    student = biglittle_config_for(WIDE, "bl_tiny", **dict(STUDENT_OVERRIDES))
    target = encoder_macs(student, ratio)["total"]
    spec = matched_timm(target, WIDE, family)
    assert spec.family == family
    assert (spec.img_size, spec.patch_size, spec.out_chans) == (64, 8, 16)
    # timm_macs is cached: count a fresh build of the spec once more.
    macs = counted_macs(TimmImageEncoder(spec), spec.img_size)
    assert macs == timm_macs(spec)
    assert abs(macs / target - 1) <= 0.05


def test_depth_ladder_shrinks_the_shallow_stages_and_steps_the_deep_one() -> None:
    ladder = depth_ladder((2, 2, 6, 2))
    patterns = [depths for _, depths in ladder]
    assert len(set(patterns)) == len(patterns) == 12
    assert (1, 1, 1, 1) in patterns and (2, 2, 5, 2) in patterns
    assert ladder[-1] == (1.0, (2, 2, 6, 2))


def test_an_unmatchable_target_is_refused_before_training() -> None:
    # Below the narrowest, shallowest TinyViT; above the widest, deepest RepViT.
    with pytest.raises(ValueError, match=r"no tiny_vit student .* within 5%: the closest"):
        matched_timm(100_000, WIDE, "tiny_vit")
    with pytest.raises(ValueError, match=r"no repvit student .* within 5%"):
        matched_timm(10**13, WIDE, "repvit")
    with pytest.raises(ValueError, match="family must be one of"):
        matched_timm(10**6, WIDE, "convnext")
    with pytest.raises(ValueError, match="target_macs must be positive"):
        matched_timm(0, WIDE, "repvit")
    # No stage of stride 4, 8, 16 or 32 lines up with a patch of 6.
    odd = dataclasses.replace(WIDE, img_size=60, patch_size=6, window_size=5)
    with pytest.raises(ValueError, match="aligns one of its stage strides"):
        matched_timm(10**6, odd, "repvit")


def test_timm_is_imported_only_when_a_timm_student_is_built() -> None:
    """timm is an optional dependency: importing the distillation and the matching must not
    import it (a fresh interpreter, since this one has)."""
    code = (
        "import sys, biglittle_sam.distill, experiments.proxy.matching; "
        "sys.exit('timm' in sys.modules)"
    )
    root = Path(__file__).resolve().parents[1]
    assert subprocess.run([sys.executable, "-c", code], cwd=root).returncode == 0


def _hooked_macs(encoder: nn.Module, img_size: int) -> int:
    """MACs of every Conv2d and Linear from forward hooks: an independent count for a trunk
    (RepViT's) that has no matrix product outside those modules."""
    total: List[int] = []

    def hook(module: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            total.append(out.numel() * module.in_channels // module.groups * kh * kw)
        else:
            total.append(out.numel() * module.in_features)

    handles = [
        m.register_forward_hook(hook)
        for m in encoder.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    with torch.no_grad():
        encoder(torch.zeros(1, 3, img_size, img_size))
    for h in handles:
        h.remove()
    return sum(total)


def test_counted_macs_agree_with_an_independent_count() -> None:
    encoder = TimmImageEncoder(dataclasses.replace(SMALL, width=12, depths=(1, 2, 3, 1)))
    encoder.train()
    assert counted_macs(encoder, 64) == _hooked_macs(encoder, 64)
    assert encoder.training  # restored
    # On a SAM ViT it is the analytic count without the LayerNorms.
    vit = build_sam_from_config(WIDE).image_encoder
    analytic = encoder_macs(WIDE)
    assert counted_macs(vit, 64) == analytic["total"] - analytic["norm"]


@pytest.mark.parametrize("family", ["tiny_vit", "repvit"])
def test_a_written_timm_student_loads_back_with_the_same_outputs(
    tmp_path: Path, teacher_ckpt: Path, family: str
) -> None:
    spec = dataclasses.replace(SMALL, family=family)
    path = write_dense_student(tmp_path / "dense.pth", spec, teacher_ckpt, seed=3)
    raw = torch.load(path, map_location="cpu", weights_only=True)  # no pickled module in it
    assert raw[DENSE_KEY] == spec.record()
    loaded, config, meta = load_student(path)
    built, _, _ = dense_student(spec, teacher_ckpt, seed=3)
    assert isinstance(loaded.image_encoder, TimmImageEncoder) and config.name == spec.name
    assert meta["teacher_sha256"] and not loaded.training
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = loaded.image_encoder(x)  # (2, 16, 8, 8)
        assert out.shape == (2, 16, 8, 8)
        assert torch.equal(out, built.image_encoder(x))
    # The prompt encoder and mask decoder are the teacher's.
    teacher = read_checkpoint(teacher_ckpt)["model"]
    state = loaded.state_dict()
    assert all(torch.equal(state[k], v) for k, v in teacher.items() if k.startswith("mask_"))


def test_a_dense_vit_student_and_bad_students(tmp_path: Path, teacher_ckpt: Path) -> None:
    narrow = dataclasses.replace(teacher_config(), name="vit_narrow", embed_dim=16)
    path = write_dense_student(tmp_path / "vit.pth", narrow, teacher_ckpt)
    sam, config, meta = load_student(path)
    assert config == narrow and meta[DENSE_KEY] == {"kind": "vit"}
    assert sam.image_encoder.patch_embed.proj.out_channels == 16
    # Another geometry than the teacher's, or a big.LITTLE config, is refused up front.
    with pytest.raises(ValueError, match="does not fit its teacher.*out_chans 32"):
        dense_student(dataclasses.replace(SMALL, out_chans=32), teacher_ckpt)
    with pytest.raises(ValueError, match="is big.LITTLE"):
        dense_student(biglittle_config_for(teacher_config(), "bl_tiny"), teacher_ckpt)
    # A record that does not describe the weights: a CheckpointError naming the file.
    timm_path = write_dense_student(tmp_path / "timm.pth", SMALL, teacher_ckpt)
    payload = torch.load(timm_path, map_location="cpu", weights_only=True)
    payload[DENSE_KEY]["width"] = 9
    torch.save(payload, tmp_path / "wrong.pth")
    with pytest.raises(CheckpointError, match="wrong.pth"):
        load_student(tmp_path / "wrong.pth")
    payload[DENSE_KEY]["family"] = "convnext"
    torch.save(payload, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="bad.pth.*unknown timm family"):
        load_student(tmp_path / "bad.pth")


def test_a_timm_student_distils_in_both_phases(
    tmp_path: Path, shapes: ShapesDataset, teacher_cache: Path, teacher_ckpt: Path
) -> None:
    init = write_dense_student(tmp_path / "init.pth", SMALL, teacher_ckpt)
    common = dict(student=DENSE, student_overrides=(), train_parts="encoder")
    one = _settings(tmp_path / "p1", shapes, teacher_cache, teacher_ckpt, **common)
    result = run_distillation(dataclasses.replace(one, init_checkpoint=str(init)))
    assert result.finished
    trained, _, meta = load_student(tmp_path / "p1" / "model.pth")
    assert meta[DENSE_KEY] == SMALL.record()
    assert load_student(tmp_path / "p1" / "init.pth")[2][DENSE_KEY] == SMALL.record()
    before = read_checkpoint(init)["model"]
    after = trained.state_dict()
    assert not torch.equal(
        after["image_encoder.lateral.0.weight"], before["image_encoder.lateral.0.weight"]
    )
    assert all(torch.equal(after[k], v) for k, v in before.items() if k.startswith("mask_"))
    # Phase 2 starts from phase 1's model, as for big.LITTLE.
    two = _settings(
        tmp_path / "p2",
        shapes,
        teacher_cache,
        teacher_ckpt,
        phase=2,
        annotations=str(shapes.coco_annotations),
        max_instances=2,
        init_checkpoint=str(tmp_path / "p1" / "model.pth"),
        **common,
    )
    assert run_distillation(two).finished
    assert load_student(tmp_path / "p2" / "model.pth")[2][DENSE_KEY] == SMALL.record()


def test_dense_settings_and_checkpoints_that_do_not_fit(
    tmp_path: Path, shapes: ShapesDataset, teacher_cache: Path, teacher_ckpt: Path
) -> None:
    dense = write_dense_student(tmp_path / "dense.pth", SMALL, teacher_ckpt)
    student, config, _ = build_student("bl_tiny", teacher_ckpt, overrides=dict(STUDENT_OVERRIDES))
    bl = save_model_checkpoint(tmp_path / "bl.pth", student, config)

    def run(init: object, **kw: object) -> None:
        fields = dict(student=DENSE, student_overrides=(), train_parts="encoder")
        fields.update(kw, init_checkpoint=None if init is None else str(init))
        run_distillation(_settings(tmp_path / "run", shapes, teacher_cache, teacher_ckpt, **fields))

    with pytest.raises(ValueError, match="student 'dense' starts from init_checkpoint"):
        run(None)
    with pytest.raises(ValueError, match="no E-blocks or routers.*'little'"):
        run(dense, train_parts="little")
    with pytest.raises(
        CheckpointError, match="bl.pth: holds a big.LITTLE student.*student 'bl_tiny'"
    ):
        run(bl)
    with pytest.raises(CheckpointError, match="dense.pth: holds a dense student.*student 'dense'"):
        run(dense, student="bl_tiny")
    assert not (tmp_path / "run").exists()  # refused before any work
