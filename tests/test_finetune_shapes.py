"""Fine-tuning: a tiny SAM trained on shapes gets better mIoU; bad images and bad settings."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Dict

import pytest
import torch

from biglittle_sam.data import DatasetError, ShapesDataset
from biglittle_sam.eval import EvalSettings, run_evaluation
from biglittle_sam.train import FinetuneSettings, run_finetune
from tools import finetune

from .train_fixtures import (
    TEACHER_FIELDS,
    check_batch_equals_one_at_a_time,
    fast_train,
    make_shapes,
    save_teacher,
)


def _miou(checkpoint: Path, shapes: ShapesDataset, out: Path) -> Dict[str, float]:
    result = run_evaluation(
        EvalSettings(
            models=(f"vit_tiny={checkpoint}",),
            annotations=str(shapes.coco_annotations),
            images=str(shapes.coco_images),
            clicks=(1,),
            device="cpu",
            progress=False,
            out_dir=str(out),
        )
    )
    assert result is not None
    return {k: v["all"] for k, v in result["models"][0]["miou"].items()}


def test_finetuning_a_tiny_sam_on_shapes_improves_miou(
    tmp_path: Path, shapes: ShapesDataset, one_thread
) -> None:
    # A decoder 64 wide: its upscaled mask features are 64 / 8 = 8 channels (the test teacher's
    # 16 / 8 = 2 are too few to learn shapes in a few dozen steps).
    start = save_teacher(
        tmp_path / "start.pth", embed_dim=64, out_chans=64, decoder_mlp_dim=128, randomize=False
    )
    before = _miou(start, shapes, tmp_path / "before")
    result = finetune.main(
        ["--images", str(shapes.coco_images), "--annotations", str(shapes.coco_annotations),
         "--model", "vit_tiny", "--checkpoint", str(start), "--train-parts", "all",
         "--steps", "60", "--batch-size", "4", "--lr", "1e-2", "--warmup-steps", "5",
         "--max-instances", "4", "--refine-clicks", "1", "--focal-weight", "2",
         "--num-workers", "0",
         "--threads", "1", "--no-progress", "--log-every", "10", "--device", "cpu",
         "--out-dir", str(tmp_path / "ft")]
    )  # fmt: skip
    assert result.finished and result.model_path is not None
    after = _miou(result.model_path, shapes, tmp_path / "after")
    assert after["box"] > before["box"] + 8, (before, after)
    assert after["click1"] > before["click1"] + 5, (before, after)
    lines = [json.loads(x) for x in (tmp_path / "ft" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [10, 20, 30, 40, 50, 60]
    assert lines[-1]["loss"] < lines[0]["loss"]
    assert {"loss_focal", "loss_dice", "loss_iou", "train_iou", "lr", "images_per_s"} <= set(
        lines[0]
    )


def test_unreadable_training_image_is_skipped_and_counted_or_fails_with_strict(
    tmp_path: Path, teacher_ckpt: Path, one_thread
) -> None:
    data = make_shapes(tmp_path / "shapes", num_images=4)
    bad = sorted(data.coco_images.iterdir())[1]  # type: ignore[union-attr]
    bad.write_bytes(b"\xff\xd8 truncated")
    settings = FinetuneSettings(
        images=str(data.coco_images),
        annotations=str(data.coco_annotations),
        model="vit_tiny",
        checkpoint=str(teacher_ckpt),
        train=fast_train(tmp_path / "ft", steps=2),
    )
    result = run_finetune(settings)
    assert result.finished and result.skipped_images == 2  # two visits in 8 stream positions
    last = json.loads((tmp_path / "ft" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["skipped_images"] == 2
    with pytest.raises(DatasetError, match=f"{bad.name}.*--strict"):
        run_finetune(
            dataclasses.replace(settings, strict=True, train=fast_train(tmp_path / "s", steps=2))
        )


def test_finetune_settings_that_cannot_work(
    tmp_path: Path, shapes: ShapesDataset, teacher_ckpt: Path, capsys: pytest.CaptureFixture
) -> None:
    base = ["--images", str(shapes.coco_images), "--annotations", str(shapes.coco_annotations),
            "--out-dir", str(tmp_path / "x"), "--num-workers", "0", "--no-progress"]  # fmt: skip
    cases = [
        (["--model", "vit_tiny", "--checkpoint", str(teacher_ckpt), "--train-parts", "little"],
         "not big.LITTLE"),
        (["--model", "vit_b", "--checkpoint", str(teacher_ckpt)], "holds a 'vit_tiny' model"),
        (["--model", "vit_tiny", "--override", "embed_dim=48", "--checkpoint", str(teacher_ckpt)],
         "does not fit"),
        (["--model", "nope"], "unknown model config 'nope'"),
        (["--model", "vit_tiny", "--batch-size", "3", "--grad-accum", "2"], "divisible"),
    ]  # fmt: skip
    for extra, message in cases:
        with pytest.raises(SystemExit) as info:
            finetune.main(base + extra)
        assert info.value.code == 2
        assert message in capsys.readouterr().err, message
    with pytest.raises(SystemExit):
        finetune.main(["--images", str(shapes.coco_images), "--dataset", "folder"])
    folder = FinetuneSettings(images=str(shapes.coco_images), dataset="folder")
    with pytest.raises(ValueError, match="ground-truth masks are needed"):
        run_finetune(folder)
    assert TEACHER_FIELDS["img_size"] == 64


def test_one_decoder_call_per_round_equals_one_image_at_a_time(
    tmp_path: Path, shapes: ShapesDataset, one_thread, monkeypatch
) -> None:
    """The batch's prompts go through the decoder together; each image's loss and gradient are
    those of the image alone (its prompts come from its own generator, in the same order)."""
    from biglittle_sam.runtime.distributed import init_distributed
    from biglittle_sam.train import finetune as finetune_module
    from biglittle_sam.train.finetune import build_finetune_task

    mixed = []  # rounds where some prompts of the batch feed back a mask and others do not
    decode = finetune_module.decode_prompts

    def counting_decode(*args, **kwargs):
        rows = args[8] if len(args) > 8 else kwargs.get("mask_rows")
        if rows is not None and bool(rows.any()) and not bool(rows.all()):
            mixed.append(rows.shape[0])
        return decode(*args, **kwargs)

    monkeypatch.setattr(finetune_module, "decode_prompts", counting_decode)

    start = save_teacher(tmp_path / "start.pth", randomize=False)
    settings = FinetuneSettings(
        images=str(shapes.coco_images),
        annotations=str(shapes.coco_annotations),
        model="vit_tiny",
        checkpoint=str(start),
        train_parts="all",
        max_instances=4,
        refine_clicks=2,
        mask_input_prob=0.5,
    )
    ctx, device = init_distributed("cpu")
    task = build_finetune_task(settings, ctx, device)
    items = [task.dataset[(i, i)] for i in range(4)]
    metrics, alone = check_batch_equals_one_at_a_time(task.module, task.sam, items)
    assert mixed, "no round mixed prompts with and without a mask input: the case is untested"
    for name in ("loss_focal", "loss_dice", "loss_iou", "train_iou"):
        mean = sum(float(a[name]) for a in alone) / len(alone)
        assert abs(float(metrics[name]) - mean) < 1e-5


def test_prompt_losses_equal_the_per_image_crops() -> None:
    """The vectorised losses over padded targets equal the losses on each image's valid crop."""
    from biglittle_sam.train.finetune import prompt_losses
    from biglittle_sam.train.losses import dice_loss, mask_iou, sigmoid_focal_loss

    gen = torch.Generator().manual_seed(0)
    side, m = 16, 3
    parts = [(16, 16), (12, 9), (5, 16)]  # (vh, vw) valid part of each prompt's image
    logits = (torch.randn(len(parts), m, side, side, generator=gen) * 3).requires_grad_()
    iou_pred = torch.rand(len(parts), m, generator=gen).requires_grad_()
    targets = torch.zeros(len(parts), 1, side, side)
    valid = torch.zeros(len(parts), 1, side, side, dtype=torch.bool)
    crops = []
    for i, (vh, vw) in enumerate(parts):
        crops.append((torch.rand(vh, vw, generator=gen) > 0.6).float())
        targets[i, 0, :vh, :vw] = crops[i]
        valid[i, 0, :vh, :vw] = True
    loss, got_parts, best = prompt_losses(logits, iou_pred, targets, valid, 20.0, 1.0, 1.0)
    (grad_logits, grad_iou) = torch.autograd.grad(loss.sum(), (logits, iou_pred))
    want, want_best, want_parts = [], [], []
    for i, (vh, vw) in enumerate(parts):
        lg = logits[i, :, :vh, :vw]  # (m, vh, vw)
        tt = crops[i].expand_as(lg)
        focal, dice = sigmoid_focal_loss(lg, tt), dice_loss(lg, tt)  # (m,)
        b = int((20.0 * focal + dice).argmin())
        iou = mask_iou(lg, tt)
        iou_loss = ((iou_pred[i] - iou) ** 2).mean()
        want.append(20.0 * focal[b] + dice[b] + iou_loss)
        want_best.append(b)
        want_parts.append(torch.stack([focal[b], dice[b], iou_loss, iou[b]]).detach())
    want_loss = torch.stack(want)
    torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=1e-6)
    assert best.tolist() == want_best
    torch.testing.assert_close(got_parts, torch.stack(want_parts, dim=1), rtol=1e-5, atol=1e-6)
    want_grads = torch.autograd.grad(want_loss.sum(), (logits, iou_pred))
    torch.testing.assert_close(grad_logits, want_grads[0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grad_iou, want_grads[1], rtol=1e-5, atol=1e-7)
    assert not grad_logits[2, :, 5:].any()  # no gradient reaches the padding
