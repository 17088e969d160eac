"""The shared loop: exact resume, refused resumes, accumulation, schedule, sampler, outputs."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest
import torch

from biglittle_sam.build_sam import sam_model_registry
from biglittle_sam.checkpoint import CheckpointError, read_checkpoint
from biglittle_sam.data import ShapesDataset
from biglittle_sam.distill import DistillSettings, run_distillation
from biglittle_sam.runtime.amp import autocast_context, keep_norms_fp32
from biglittle_sam.train import FinetuneSettings, StreamSampler, run_finetune
from biglittle_sam.train.cli import add_train_arguments, train_settings_from_args
from biglittle_sam.train.logging import RunningMeans
from biglittle_sam.train.optim import lr_factor
from biglittle_sam.train.settings import TrainSettings, fingerprint_settings

from .train_fixtures import STUDENT_OVERRIDES, fast_train


def _distill(out: Path, shapes: ShapesDataset, cache: Path, teacher: Path, **train: Any):
    return DistillSettings(
        cache=str(cache),
        images=str(shapes.coco_images),
        student="bl_tiny",
        teacher_checkpoint=str(teacher),
        student_overrides=STUDENT_OVERRIDES,
        train=fast_train(out, **train),
    )


def _finetune(out: Path, shapes: ShapesDataset, teacher: Path, **train: Any) -> FinetuneSettings:
    return FinetuneSettings(
        images=str(shapes.coco_images),
        annotations=str(shapes.coco_annotations),
        model="bl_tiny",
        sam_checkpoint=str(teacher),
        overrides=STUDENT_OVERRIDES,
        train_parts="all",
        max_instances=3,
        refine_clicks=1,
        train=fast_train(out, **train),
    )


def _state(path: Path) -> Dict[str, torch.Tensor]:
    return read_checkpoint(path)["model"]


def _losses(out: Path) -> Dict[int, float]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return {json.loads(x)["step"]: json.loads(x)["loss"] for x in lines}


@pytest.mark.parametrize("task", ["distill", "finetune"])
def test_resume_continues_exactly(
    task: str,
    tmp_path: Path,
    shapes: ShapesDataset,
    teacher_cache: Path,
    teacher_ckpt: Path,
    one_thread,
) -> None:
    def settings(out: Path, **train: Any) -> Any:
        if task == "distill":
            return _distill(out, shapes, teacher_cache, teacher_ckpt, steps=6, **train)
        return _finetune(out, shapes, teacher_ckpt, steps=6, **train)

    run = run_distillation if task == "distill" else run_finetune
    whole = run(settings(tmp_path / "whole"))
    assert whole.finished and whole.step == 6
    # 6 images, 4 per step: step 2 straddles the first epoch boundary, so the data position is
    # mid-epoch at the interruption.
    first = run(settings(tmp_path / "split", stop_after=3))
    assert not first.finished and first.step == 3 and first.model_path is None
    assert read_checkpoint(first.last_checkpoint)["train"]["samples_seen"] == 12
    second = run(settings(tmp_path / "split", resume="auto"))
    assert second.finished and second.step == 6
    a, b = _state(whole.model_path), _state(second.model_path)  # type: ignore[arg-type]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"
    assert _losses(tmp_path / "whole") == _losses(tmp_path / "split")
    opt_a = read_checkpoint(whole.last_checkpoint)["train"]["optimizer"]["state"]
    opt_b = read_checkpoint(second.last_checkpoint)["train"]["optimizer"]["state"]
    for i in opt_a:
        for k in opt_a[i]:
            assert torch.equal(opt_a[i][k], opt_b[i][k])
    # The model and the training checkpoint load back through the registry.
    name = "bl_tiny"
    sam = sam_model_registry[name](checkpoint=second.model_path)
    assert sam.image_encoder.teacher.startswith("vit_tiny:")
    sam_model_registry[name](checkpoint=second.last_checkpoint)
    assert (tmp_path / "split" / "loss.png").read_bytes()[:4] == b"\x89PNG"
    # Resuming the finished run trains nothing and leaves its model file byte for byte (caches
    # and students record the checksum of the model they came from).
    before = second.model_path.read_bytes()  # type: ignore[union-attr]
    time.sleep(1.1)  # a rewritten file would carry another "created" second
    again = run(settings(tmp_path / "split", resume="auto"))
    assert again.finished and again.step == 6 and again.model_path == second.model_path
    assert second.model_path.read_bytes() == before  # type: ignore[union-attr]


def test_weight_average_resumes_exactly_and_is_the_final_model(
    tmp_path: Path, shapes: ShapesDataset, teacher_cache: Path, teacher_ckpt: Path, one_thread
) -> None:
    def settings(out: Path, **train: Any) -> DistillSettings:
        return _distill(out, shapes, teacher_cache, teacher_ckpt, steps=6, ema_decay=0.5, **train)

    whole = run_distillation(settings(tmp_path / "whole"))
    run_distillation(settings(tmp_path / "split", stop_after=4))
    second = run_distillation(settings(tmp_path / "split", resume="auto"))
    a, b = _state(whole.model_path), _state(second.model_path)  # type: ignore[arg-type]
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"
    # The model file holds the average; the training checkpoint the last weights and the average.
    last = read_checkpoint(whole.last_checkpoint)
    shadow = last["train"]["ema"]["shadow"]
    assert last["train"]["ema"]["updates"] == 6 and shadow
    assert read_checkpoint(whole.model_path)["training"]["weights"] == "EMA 0.5"
    moved = [k for k in shadow if not torch.equal(last["model"][k], a[k])]
    assert moved, "the averaged weights equal the last ones"
    for k in shadow:
        assert torch.equal(a[k], shadow[k]), k
    frozen = [k for k in a if k not in shadow]
    assert frozen and all(torch.equal(a[k], last["model"][k]) for k in frozen)


def test_options_added_later_leave_older_checkpoints_resumable(
    tmp_path: Path, shapes: ShapesDataset, teacher_cache: Path, teacher_ckpt: Path, one_thread
) -> None:
    out = tmp_path / "run"
    run_distillation(
        _distill(out, shapes, teacher_cache, teacher_ckpt, ema_decay=0.5, stop_after=1)
    )
    # Switched on, they are part of the configuration a resume must match.
    with pytest.raises(CheckpointError, match="ema_decay: checkpoint 0.5, now absent"):
        run_distillation(_distill(out, shapes, teacher_cache, teacher_ckpt, resume="auto"))
    on = dataclasses.replace(
        _distill(out, shapes, teacher_cache, teacher_ckpt, ema_decay=0.5, resume="auto"),
        soft_targets=True,
    )
    with pytest.raises(CheckpointError, match="soft_targets: not in the checkpoint, now True"):
        run_distillation(on)
    # A checkpoint written before they existed (its fingerprint does not name them) resumes a
    # run that leaves them off, as does one that recorded them off.
    last = out / "checkpoints" / "last.pth"
    payload = read_checkpoint(last)
    del payload["train"]["fingerprint"]["settings"]["train"]["ema_decay"]
    payload["train"].pop("ema")
    torch.save(payload, last)
    resumed = run_distillation(_distill(out, shapes, teacher_cache, teacher_ckpt, resume="auto"))
    assert resumed.finished and resumed.step == 4
    assert "soft_targets" in read_checkpoint(last)["train"]["fingerprint"]["settings"]["task"]
    again = run_distillation(_distill(out, shapes, teacher_cache, teacher_ckpt, resume="auto"))
    assert again.finished and again.step == 4


def test_weight_average_follows_its_formula() -> None:
    from biglittle_sam.train.ema import WeightAverage

    layer = torch.nn.Linear(2, 1)
    layer.bias.requires_grad_(False)
    ema = WeightAverage(layer, decay=0.9)
    w0 = layer.weight.detach().clone()
    with torch.no_grad():
        layer.weight.add_(1.0)
    ema.update()  # d = min(0.9, 1 / 10) = 0.1
    assert torch.allclose(ema.shadow["weight"], 0.1 * w0 + 0.9 * (w0 + 1.0))
    assert set(ema.shadow) == {"weight"}
    with ema.applied():
        assert torch.equal(layer.weight, ema.shadow["weight"])
    assert torch.equal(layer.weight, w0 + 1.0)
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(layer, decay=1.0)
    with pytest.raises(ValueError, match="other parameters"):
        ema.load_state_dict({"shadow": {"bias": torch.zeros(1)}, "updates": 1})


def test_resume_from_another_configuration_fails_before_any_step(
    tmp_path: Path, shapes: ShapesDataset, teacher_cache: Path, teacher_ckpt: Path, one_thread
) -> None:
    out = tmp_path / "run"
    run_distillation(_distill(out, shapes, teacher_cache, teacher_ckpt, steps=4, stop_after=2))
    last = out / "checkpoints" / "last.pth"
    before = (last.read_bytes(), (out / "metrics.jsonl").read_text())
    changed = _distill(out, shapes, teacher_cache, teacher_ckpt, steps=4, lr=5e-4, resume="auto")
    with pytest.raises(CheckpointError, match=r"different configuration.*lr: checkpoint 0\.001"):
        run_distillation(changed)
    other = dataclasses.replace(
        _distill(out, shapes, teacher_cache, teacher_ckpt, steps=4, resume="auto"),
        keep_ratios=(0.5,),
    )
    with pytest.raises(CheckpointError, match="keep_ratios"):
        run_distillation(other)
    assert (last.read_bytes(), (out / "metrics.jsonl").read_text()) == before
    # A finetune checkpoint cannot resume a distillation, and a model file is no training state.
    ft = run_finetune(_finetune(tmp_path / "ft", shapes, teacher_ckpt, steps=1))
    wrong_task = _distill(out, shapes, teacher_cache, teacher_ckpt, steps=4)
    wrong_task = dataclasses.replace(
        wrong_task, train=dataclasses.replace(wrong_task.train, resume=str(ft.last_checkpoint))
    )
    with pytest.raises(CheckpointError, match="'finetune' training checkpoint"):
        run_distillation(wrong_task)
    model_only = dataclasses.replace(
        wrong_task, train=dataclasses.replace(wrong_task.train, resume=str(ft.model_path))
    )
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        run_distillation(model_only)


def test_gradient_accumulation_matches_one_big_batch(
    tmp_path: Path, shapes: ShapesDataset, teacher_cache: Path, teacher_ckpt: Path, one_thread
) -> None:
    one = run_distillation(_distill(tmp_path / "a", shapes, teacher_cache, teacher_ckpt))
    two = run_distillation(
        _distill(tmp_path / "b", shapes, teacher_cache, teacher_ckpt, grad_accum=2)
    )
    a, b = _state(one.model_path), _state(two.model_path)  # type: ignore[arg-type]
    # Summation order differs, so equal within float tolerance, far below one step (lr 1e-3).
    # (A router bias has an exactly-zero gradient, shifting a softmax group; Adam turns its
    # rounding noise into updates of ~1e-5, hence the absolute tolerance.)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=2e-5, rtol=1e-4), k
    assert _losses(tmp_path / "a") == pytest.approx(_losses(tmp_path / "b"), rel=1e-4, abs=1e-7)


def test_warmup_then_cosine() -> None:
    factors = [lr_factor(s, total=10, warmup=2, min_ratio=0.1) for s in range(10)]
    assert factors[:2] == [0.5, 1.0]
    assert factors[2] == pytest.approx(1.0) and factors[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(factors[1:], factors[2:]))


def test_stream_sampler_shards_the_same_global_batches() -> None:
    def take(sampler: StreamSampler, n: int):
        it = iter(sampler)
        return [next(it) for _ in range(n)]

    single = take(StreamSampler(7, 4, rank=0, world_size=1, seed=3), 12)
    r0 = take(StreamSampler(7, 2, rank=0, world_size=2, seed=3), 6)
    r1 = take(StreamSampler(7, 2, rank=1, world_size=2, seed=3), 6)
    for m in range(3):
        merged = r0[2 * m : 2 * m + 2] + r1[2 * m : 2 * m + 2]
        assert merged == single[4 * m : 4 * m + 4]
    # Every epoch is a permutation; a sampler started mid-stream continues the same stream.
    assert sorted(i for i, _ in single[:7]) == list(range(7))
    assert take(StreamSampler(7, 4, 0, 1, seed=3, start=8), 4) == single[8:12]
    with pytest.raises(ValueError, match="multiple"):
        StreamSampler(7, 4, 0, 1, seed=3, start=5)


def test_bf16_autocast_keeps_layer_norms_in_fp32() -> None:
    sam = sam_model_registry["bl_tiny"](img_size=64, patch_size=8, window_size=4)
    assert keep_norms_fp32(sam) > 0 and keep_norms_fp32(sam) == 0  # idempotent
    seen = []
    norm = sam.image_encoder.blocks[0].norm1
    hook = norm.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    x = torch.randn(1, 3, 64, 64)
    with autocast_context(torch.device("cpu"), torch.bfloat16):
        out = sam.image_encoder(x)
    hook.remove()
    assert seen == [torch.float32]
    assert torch.isfinite(out).all()


def test_tensorboard_without_the_package_is_a_clear_error(
    tmp_path: Path, shapes: ShapesDataset, teacher_cache: Path, teacher_ckpt: Path, one_thread
) -> None:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("tensorboard is installed")
    settings = _distill(tmp_path, shapes, teacher_cache, teacher_ckpt, tensorboard=True)
    with pytest.raises(ImportError, match="pip install tensorboard"):
        run_distillation(settings)
    assert not (tmp_path / "checkpoints").exists()


def test_metrics_after_a_resume_equal_an_uninterrupted_run(
    tmp_path: Path, shapes: ShapesDataset, teacher_cache: Path, teacher_ckpt: Path, one_thread
) -> None:
    def settings(out: Path, **train: Any) -> DistillSettings:
        return _distill(out, shapes, teacher_cache, teacher_ckpt, steps=6, log_every=4, **train)

    run_distillation(settings(tmp_path / "whole"))
    # Stopped at step 3, between two lines: an interim line is written, and the checkpoint holds
    # the running sums of steps 1-3 and the time spent.
    first = run_distillation(settings(tmp_path / "split", stop_after=3))
    assert [r["step"] for r in first.history] == [3]
    saved = read_checkpoint(first.last_checkpoint)["train"]["log"]
    assert saved["ranks"][0]["steps"] == 3 and saved["elapsed_s"] > 0
    run_distillation(settings(tmp_path / "split", resume="auto"))

    def rows(out: Path) -> List[Dict[str, Any]]:
        return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]

    clock = ("elapsed_s", "images_per_s")
    whole, split = rows(tmp_path / "whole"), rows(tmp_path / "split")
    assert [r["step"] for r in split] == [4, 6]  # the interim line gave way to the full one
    for a, b in zip(whole, split):
        assert {k: v for k, v in a.items() if k not in clock} == {
            k: v for k, v in b.items() if k not in clock
        }
    # elapsed_s continues from the checkpoint instead of restarting.
    assert saved["elapsed_s"] <= split[0]["elapsed_s"] <= split[1]["elapsed_s"]


def test_running_means_move_to_another_number_of_processes() -> None:
    two = [
        {"sums": {"loss": 3.0}, "steps": 2, "skipped": 1},
        {"sums": {"loss": 5.0}, "steps": 2, "skipped": 2},
    ]
    same = RunningMeans.restore(two, rank=1, world=2)
    assert (same.sums, same.steps, same.skipped) == ({"loss": 5.0}, 2, 2)
    # One process: the line's loss, sum / (steps x world), stays (3 + 5) / (2 x 2) = 2.
    one = RunningMeans.restore(two, rank=0, world=1)
    assert one.sums["loss"] / (one.steps * 1) == 2.0 and one.skipped == 3
    four = [RunningMeans.restore(two, rank=r, world=4) for r in range(4)]
    assert sum(m.sums["loss"] for m in four) / (2 * 4) == 2.0
    assert sum(m.skipped for m in four) == 3
    assert RunningMeans.restore([], rank=0, world=1).steps == 0


def test_stale_temp_files_are_swept_and_only_the_last_checkpoints_kept(
    tmp_path: Path, shapes: ShapesDataset, teacher_cache: Path, teacher_ckpt: Path, one_thread
) -> None:
    out = tmp_path / "run"

    def settings(keep_last: int, **train: Any) -> DistillSettings:
        return _distill(
            out,
            shapes,
            teacher_cache,
            teacher_ckpt,
            steps=5,
            checkpoint_every=1,
            keep_checkpoints=True,
            keep_last=keep_last,
            **train,
        )

    run_distillation(settings(keep_last=0, stop_after=2))
    ckpts = out / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("step_*.pth")) == [
        "step_0000001.pth",
        "step_0000002.pth",
    ]
    # What SIGKILLs mid-write leave behind, from before this run; and one being written now.
    stale = [
        ckpts / ".last.pth.k3j2_x.tmp",
        ckpts / ".step_0000002.pth.tmp",
        out / ".metrics.jsonl.a1b2.tmp",
        out / ".model.pth.zz9.tmp",
    ]
    for path in stale:
        path.write_bytes(b"half a checkpoint")
        os.utime(path, (time.time() - 3600, time.time() - 3600))
    current = ckpts / ".last.pth.now.tmp"
    current.write_bytes(b"")
    os.utime(current, (time.time() + 3600, time.time() + 3600))
    # keep_last is not part of what a resume must match.
    done = run_distillation(settings(keep_last=2, resume="auto"))
    assert done.finished and done.step == 5
    assert not any(p.exists() for p in stale) and current.exists()
    assert sorted(p.name for p in ckpts.glob("step_*.pth")) == [
        "step_0000004.pth",
        "step_0000005.pth",
    ]
    assert (ckpts / "step_0000005.pth").read_bytes() == (ckpts / "last.pth").read_bytes()


def test_keep_last_is_a_flag_with_a_checked_value() -> None:
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    given = train_settings_from_args(parser.parse_args(["--keep-last", "3"]), TrainSettings())
    assert given.keep_last == 3 and TrainSettings().keep_last == 10

    @dataclasses.dataclass(frozen=True)
    class Task:
        train: TrainSettings

    assert fingerprint_settings(Task(given), frozenset({"train"})) == fingerprint_settings(
        Task(TrainSettings()), frozenset({"train"})
    )
    with pytest.raises(ValueError, match="keep_last must be >= 0"):
        TrainSettings(keep_last=-1)


@pytest.mark.parametrize("umask", [0o022, 0o077], ids=["022", "077"])
def test_every_file_a_run_writes_follows_the_umask(
    umask: int, tmp_path: Path, shapes: ShapesDataset, teacher_ckpt: Path, one_thread
) -> None:
    out = tmp_path / "run"
    settings = _finetune(out, shapes, teacher_ckpt, steps=2, keep_checkpoints=True)
    old = os.umask(umask)
    try:
        run_finetune(settings)
    finally:
        os.umask(old)
    files = sorted(p for p in out.rglob("*") if p.is_file())
    names = {p.relative_to(out).as_posix() for p in files}
    assert {"metrics.jsonl", "model.pth", "checkpoints/last.pth"} <= names
    assert "checkpoints/step_0000002.pth" in names
    modes = {p.relative_to(out).as_posix(): oct(p.stat().st_mode & 0o777) for p in files}
    assert modes == {name: oct(0o666 & ~umask) for name in names}
