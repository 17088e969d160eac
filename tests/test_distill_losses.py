"""Distillation losses and gradients: the padded region is ignored, gradients reach the E-blocks
and routers, and a few steps of phase 1 and phase 2 lower the loss on a fixed batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from biglittle_sam.build_sam import set_keep_ratio
from biglittle_sam.data import ShapesDataset
from biglittle_sam.distill import DistillSettings, build_distill_task
from biglittle_sam.distill.losses import embedding_distill_loss, valid_region
from biglittle_sam.runtime.distributed import DistContext
from biglittle_sam.train import collate_items

from .train_fixtures import STUDENT_OVERRIDES, check_batch_equals_one_at_a_time, fast_train


def test_valid_region_is_the_top_left_block() -> None:
    region = valid_region(torch.tensor([[2, 3], [4, 4]]), 4)  # (2, 1, 4, 4)
    assert region.shape == (2, 1, 4, 4)
    assert int(region[0].sum()) == 6 and bool(region[0, 0, :2, :3].all())
    assert bool(region[1].all())


def test_masked_loss_ignores_the_padded_region() -> None:
    gen = torch.Generator().manual_seed(0)
    student = torch.randn(2, 8, 6, 6, generator=gen)
    teacher = torch.randn(2, 8, 6, 6, generator=gen)
    valid = torch.tensor([[4, 3], [6, 5]])
    loss, mse, cos = embedding_distill_loss(student, teacher, valid)
    # Change only positions outside each image's valid block: nothing moves.
    outside = ~valid_region(valid, 6).expand_as(student)  # (2, 8, 6, 6)
    noisy = torch.where(outside, student + 100 * torch.randn(student.shape, generator=gen), student)
    loss2, mse2, cos2 = embedding_distill_loss(noisy, teacher, valid)
    assert torch.equal(loss, loss2) and torch.equal(mse, mse2) and torch.equal(cos, cos2)
    # A change inside the valid block does move it, for that image only.
    inside = student.clone()
    inside[0, :, 0, 0] += 5.0
    loss3, _, _ = embedding_distill_loss(inside, teacher, valid)
    assert loss3[0] > loss[0] and loss3[1] == loss[1]
    # The MSE is the mean over channels and valid positions.
    expected = ((student[0, :, :4, :3] - teacher[0, :, :4, :3]) ** 2).mean()
    assert torch.allclose(mse[0], expected)
    same, _, _ = embedding_distill_loss(teacher, teacher, valid)
    assert torch.allclose(same, torch.zeros(2), atol=1e-6)


def _task(tmp_path: Path, shapes: ShapesDataset, cache: Path, teacher: Path, **kw):  # noqa
    settings = DistillSettings(
        cache=str(cache),
        images=str(shapes.coco_images),
        annotations=str(shapes.coco_annotations) if kw.get("phase") == 2 else None,
        student="bl_tiny",
        teacher_checkpoint=str(teacher),
        student_overrides=STUDENT_OVERRIDES,
        train=fast_train(tmp_path),
        **kw,
    )
    return build_distill_task(settings, DistContext(), torch.device("cpu"))


def test_gradients_reach_little_blocks_and_routers(
    tmp_path: Path, shapes: ShapesDataset, teacher_cache: Path, teacher_ckpt: Path, one_thread
) -> None:
    task = _task(tmp_path, shapes, teacher_cache, teacher_ckpt)
    set_keep_ratio(task.sam, 0.5)
    batch = collate_items([task.dataset[(i, i)] for i in range(2)])
    trainable = {n: p for n, p in task.sam.named_parameters() if p.requires_grad}
    assert trainable and all(
        any(part in n for part in (".little.", ".router.", ".context.")) for n in trainable
    )
    assert any(".context." in n for n in trainable)  # bl_tiny's default "pooled" global context
    loss, _ = task.module(batch)
    loss.sum().backward()
    # gamma starts at 0, so inside the E-blocks only gamma learns first (and the context modules'
    # zero output projection); the routers learn through the straight-through weights of the top-k.
    for name, p in trainable.items():
        if name.endswith(("little.gamma", "context.proj.weight")) or ".router." in name:
            assert p.grad is not None and float(p.grad.abs().sum()) > 0, name
    task.sam.zero_grad()
    with torch.no_grad():
        for name, p in trainable.items():
            if name.endswith("little.gamma"):
                p.fill_(0.1)
            elif name.endswith("context.proj.weight"):  # zero at first, as gamma
                p.normal_(0.0, 0.1)
    loss, _ = task.module(batch)
    loss.sum().backward()
    for name, p in trainable.items():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert float(p.grad.abs().sum()) > 0, f"{name} received no gradient"
    frozen = [n for n, p in task.sam.named_parameters() if not p.requires_grad]
    assert all(dict(task.sam.named_parameters())[n].grad is None for n in frozen)


@pytest.mark.parametrize("phase, soft", [(1, False), (2, False), (2, True)])
def test_a_few_steps_lower_the_loss_on_a_fixed_batch(
    phase: int,
    soft: bool,
    tmp_path: Path,
    shapes: ShapesDataset,
    teacher_cache: Path,
    teacher_ckpt: Path,
    one_thread,
) -> None:
    task = _task(tmp_path, shapes, teacher_cache, teacher_ckpt, phase=phase, soft_targets=soft)
    batch = collate_items([task.dataset[(i, i)] for i in range(3)])
    # At keep ratio 1 the fresh student computes exactly the teacher: the loss's floor (0 for the
    # embeddings; BCE + soft Dice of the teacher's logits against their own masks in phase 2,
    # with soft targets the BCE is the entropy of the teacher's probabilities).
    set_keep_ratio(task.sam, 1.0)
    with torch.no_grad():
        floor = float(task.module(batch)[0].mean())
    set_keep_ratio(task.sam, 0.25)
    params = [p for p in task.sam.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    losses = []
    for _ in range(12):
        loss, metrics = task.module(batch)
        total = loss.mean()
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        losses.append(float(total.detach()))
    assert losses[0] > floor + 1e-3
    assert losses[-1] - floor < 0.8 * (losses[0] - floor), (floor, losses)
    if phase == 2:
        assert "loss_mask" in metrics and float(metrics["loss_mask"]) > 0


def test_router_exploration_is_seeded_per_image_and_off_outside_training(
    tmp_path: Path, shapes: ShapesDataset, teacher_cache: Path, teacher_ckpt: Path, one_thread
) -> None:
    task = _task(tmp_path, shapes, teacher_cache, teacher_ckpt, router_noise=1.0)
    set_keep_ratio(task.sam, 0.25)
    encoder = task.sam.image_encoder
    batch = collate_items([task.dataset[(i, i)] for i in range(2)])
    exploration = task.module.exploration
    assert exploration is not None and task.begin_step(0)["router_noise"] == 1.0

    def selected(seeds):  # (B, H, W) bool of layer 0, with the noise of ``seeds``
        exploration.set_images(seeds)
        try:
            with torch.no_grad():
                return encoder.forward_with_aux(batch["image"])[1].layers[0].selected
        finally:
            exploration.set_images(None)

    encoder.train()
    plain = selected(None)
    noisy = selected([1, 2])
    assert not torch.equal(plain, noisy) and torch.equal(noisy, selected([1, 2]))
    # Image 0's noise depends on its own seed only, not on the other images of the batch.
    assert torch.equal(selected([1, 5])[0], noisy[0]) and not torch.equal(selected([1, 5]), noisy)
    encoder.eval()
    assert torch.equal(selected([1, 2]), plain)
    assert task.begin_step(task.settings["train"]["steps"])["router_noise"] == 0.0


def test_phase_2_decodes_the_batch_at_once_as_one_image_at_a_time(
    tmp_path: Path, shapes: ShapesDataset, teacher_cache: Path, teacher_ckpt: Path, one_thread
) -> None:
    """Phase 2 runs the decoders once per prompt type and round for the whole batch; each image's
    loss and gradient are those of the image alone (its own generator, the same draws)."""
    task = _task(tmp_path, shapes, teacher_cache, teacher_ckpt, phase=2, iou_weight=1.0)
    set_keep_ratio(task.sam, 0.5)
    items = [task.dataset[(i, i)] for i in range(4)]
    metrics, alone = check_batch_equals_one_at_a_time(task.module, task.sam, items)
    mean = sum(float(a["loss_mask"]) for a in alone) / len(alone)
    assert abs(float(metrics["loss_mask"]) - mean) < 1e-5 and mean > 0


def test_phase_2_iou_term_is_the_predicted_iou_error_against_the_teacher(
    tmp_path: Path, shapes: ShapesDataset, teacher_cache: Path, teacher_ckpt: Path, one_thread
) -> None:
    batch_items = None
    losses = {}
    for weight in (0.0, 2.0):
        task = _task(tmp_path, shapes, teacher_cache, teacher_ckpt, phase=2, iou_weight=weight)
        batch_items = batch_items or [task.dataset[(i, i)] for i in range(3)]
        batch = collate_items(batch_items)
        with torch.no_grad():
            set_keep_ratio(task.sam, 1.0)  # the fresh student is its teacher: no IoU error
            at_teacher = task.module(batch)[1]["loss_mask"]
            set_keep_ratio(task.sam, 0.25)
            losses[weight] = task.module(batch)[1]["loss_mask"]
        losses[(weight, "teacher")] = at_teacher
    torch.testing.assert_close(losses[(0.0, "teacher")], losses[(2.0, "teacher")])
    assert float(losses[2.0]) > float(losses[0.0])
    with pytest.raises(ValueError, match="loss weights"):
        _task(tmp_path, shapes, teacher_cache, teacher_ckpt, phase=2, iou_weight=-1.0)


@pytest.mark.parametrize("soft", [False, True])
def test_mask_distill_losses_equal_the_per_image_crops(soft: bool) -> None:
    """Phase 2's vectorised loss over padded masks equals the loss on each image's valid crop."""
    from biglittle_sam.distill.distill import mask_distill_losses
    from biglittle_sam.train.losses import bce_loss, dice_loss

    gen = torch.Generator().manual_seed(1)
    side, m = 16, 3
    parts = [(16, 16), (9, 13), (16, 4)]  # (vh, vw) valid part of each prompt's image
    s_logits = (torch.randn(len(parts), m, side, side, generator=gen) * 3).requires_grad_()
    t_logits = torch.randn(len(parts), m, side, side, generator=gen) * 3
    s_iou = torch.rand(len(parts), m, generator=gen).requires_grad_()
    t_iou = torch.rand(len(parts), m, generator=gen)
    valid = torch.zeros(len(parts), 1, side, side, dtype=torch.bool)
    for i, (vh, vw) in enumerate(parts):
        valid[i, 0, :vh, :vw] = True
    loss, _, _ = mask_distill_losses(s_logits, s_iou, t_logits, t_iou, valid, soft, 0.5)
    want = []
    for i, (vh, vw) in enumerate(parts):
        t = t_logits[i, :, :vh, :vw]  # (m, vh, vw)
        target = (t > 0).float()
        pred = s_logits[i, :, :vh, :vw]
        per_mask = bce_loss(pred, torch.sigmoid(t) if soft else target) + dice_loss(pred, target)
        want.append((per_mask + 0.5 * (s_iou[i] - t_iou[i]) ** 2).mean())
    want_loss = torch.stack(want)
    torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=1e-6)
    got = torch.autograd.grad(loss.sum(), (s_logits, s_iou))
    expected = torch.autograd.grad(want_loss.sum(), (s_logits, s_iou))
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert not got[0][1, :, 9:].any()  # no gradient reaches the padding
