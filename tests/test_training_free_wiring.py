"""The training-free mode wired through the registry's default, pipelines, predictors and export.

Official weights alone mean the training-free mode unless ``training_free=False`` asks for fresh
E-blocks; a custom-size plain SAM checkpoint (the proxy teacher) lends its sizes; segment_anything's
registry takes the ``bl_*`` names for pipelines; ``BatchedSamPredictor``, ONNX export and the eval
CLI's model specs take the mode.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import pytest
import segment_anything
import torch
from segment_anything import SamPredictor

from biglittle_sam import register_with_segment_anything, sam_model_registry
from biglittle_sam.build_sam import set_keep_ratio
from biglittle_sam.checkpoint import CheckpointError, save_model_checkpoint
from biglittle_sam.predictor import BatchedSamPredictor
from tests.eval_helpers import REPO, read_json

TEACHER = REPO / "biglittle_sam" / "assets" / "proxy_teacher.pth"


def _is_training_free(sam: torch.nn.Module) -> bool:
    """The mode, checked on the weights too: no E-block or router tensor in the model."""
    tf = bool(sam.image_encoder.config.training_free)
    little = any(".little." in k or ".router." in k for k in sam.state_dict())
    assert tf != little
    return tf


def _image(seed: int = 0, size: Tuple[int, int] = (200, 240)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)


def test_official_weights_alone_mean_the_training_free_mode(tiny_sam_checkpoint: Path) -> None:
    build = sam_model_registry["bl_tiny"]
    assert _is_training_free(build(sam_checkpoint=tiny_sam_checkpoint))
    assert _is_training_free(build(checkpoint=tiny_sam_checkpoint, keep_ratio=0.25))
    assert _is_training_free(build(checkpoint=tiny_sam_checkpoint, training_free=True))
    # False asks for fresh E-blocks and routers on SAM's weights: what distillation starts from
    assert not _is_training_free(build(sam_checkpoint=tiny_sam_checkpoint, training_free=False))
    with pytest.raises(CheckpointError, match="sam_checkpoint=... with training_free=False"):
        build(checkpoint=tiny_sam_checkpoint, training_free=False)
    # no weights at all (the speed benchmark's random models): the learned mode, as before
    assert not _is_training_free(build())
    assert not _is_training_free(build(keep_ratio=0.25))


def test_a_big_little_checkpoint_keeps_its_mode(tiny_sam_checkpoint: Path, tmp_path: Path) -> None:
    build = sam_model_registry["bl_tiny"]
    learned = build(sam_checkpoint=tiny_sam_checkpoint, training_free=False)
    learned_path = save_model_checkpoint(tmp_path / "bl.pth", learned, learned.image_encoder.config)
    tf = build(sam_checkpoint=tiny_sam_checkpoint, skip_rule="identity")
    tf_path = save_model_checkpoint(tmp_path / "tf.pth", tf, tf.image_encoder.config)
    assert not _is_training_free(build(checkpoint=learned_path))
    # the official file for the rest, the big.LITTLE checkpoint on top: the checkpoint's mode
    both = build(checkpoint=learned_path, sam_checkpoint=tiny_sam_checkpoint)
    assert not _is_training_free(both)
    again = build(checkpoint=tf_path)
    assert _is_training_free(again) and again.image_encoder.config.skip_rule == "identity"
    with pytest.raises(CheckpointError, match="learned mode: load it without training_free"):
        build(checkpoint=learned_path, training_free=True)
    with pytest.raises(CheckpointError, match="training-free bl_tiny model .* without training_fr"):
        build(checkpoint=tf_path, training_free=False)
    with pytest.raises(CheckpointError, match="is a big.LITTLE checkpoint .* as checkpoint="):
        build(sam_checkpoint=learned_path)


@pytest.mark.parametrize("argument", ["checkpoint", "sam_checkpoint"])
def test_the_proxy_teacher_lends_its_sizes_and_equals_itself_at_one(argument: str) -> None:
    teacher = sam_model_registry["vit_tiny"](checkpoint=TEACHER)
    half = sam_model_registry["bl_tiny"](**{argument: TEACHER}, keep_ratio=0.5)
    config = half.image_encoder.config
    assert _is_training_free(half) and config.keep_ratio == 0.5
    stored = teacher.image_encoder
    assert (config.img_size, config.patch_size, config.window_size) == (96, 4, 7)
    assert config.global_attn_indexes == (2, 5) and len(stored.blocks) == config.depth
    assert half.image_encoder.teacher == "vit_tiny:proxy_teacher.pth"
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = stored(x)
        routed = half.image_encoder(x)
        set_keep_ratio(half, 1.0)
        dense = half.image_encoder(x)
    assert (dense - expected).abs().max().item() < 1e-5
    assert (routed - expected).abs().max().item() > 1e-3
    with pytest.raises(
        CheckpointError, match=r"does not fit model 'bl_b'.*embed_dim 64, 6 blocks"
    ):  # sizes are adopted from the teacher only
        sam_model_registry["bl_b"](**{argument: TEACHER})


@pytest.fixture()
def upstream_registry(monkeypatch: pytest.MonkeyPatch) -> Dict[str, object]:
    """segment_anything's registry as a pipeline sees it, restored after the test."""
    registry = dict(segment_anything.sam_model_registry)
    monkeypatch.setattr(segment_anything, "sam_model_registry", registry)
    return registry


def test_a_pipeline_builds_bl_names_through_segment_anythings_registry(
    upstream_registry: Dict[str, object], tiny_sam_checkpoint: Path
) -> None:
    before = dict(upstream_registry)
    registry = register_with_segment_anything()
    assert registry is segment_anything.sam_model_registry
    assert register_with_segment_anything() == registry  # again: nothing changes
    assert {k: registry[k] for k in before} == before  # upstream entries untouched
    assert set(registry) - set(before) == {n for n in sam_model_registry if n.startswith("bl_")}
    with torch.device("meta"):  # no recursion through the merged dict (commit 5a44394)
        assert type(registry["vit_b"]().image_encoder).__name__ == "ImageEncoderViT"
    # the route a pipeline takes: a model-type string and a checkpoint path
    sam = segment_anything.sam_model_registry["bl_tiny"](checkpoint=tiny_sam_checkpoint)
    assert _is_training_free(sam) and sam.image_encoder.keep_ratio == 0.5
    predictor = SamPredictor(sam)
    predictor.set_image(_image())
    masks, scores, logits = predictor.predict(point_coords=np.array([[120, 100]]), point_labels=[1])
    assert masks.shape == (3, 200, 240) and scores.shape == (3,) and np.isfinite(logits).all()


def test_the_pipeline_route_at_keep_ratio_one_is_plain_sam(
    upstream_registry: Dict[str, object], tiny_sam_checkpoint: Path
) -> None:
    register_with_segment_anything()
    ours = segment_anything.sam_model_registry["bl_tiny"](
        checkpoint=tiny_sam_checkpoint, keep_ratio=1.0
    )
    plain = sam_model_registry["vit_tiny"](checkpoint=tiny_sam_checkpoint)
    image, point = _image(1), np.array([[60, 150]])
    got, want = SamPredictor(ours), SamPredictor(plain)
    for predictor in (got, want):
        predictor.set_image(image)
    diff = (got.get_image_embedding() - want.get_image_embedding()).abs().max().item()
    assert diff < 1e-5
    a = got.predict(point_coords=point, point_labels=[1], return_logits=True)
    b = want.predict(point_coords=point, point_labels=[1], return_logits=True)
    np.testing.assert_allclose(a[0], b[0], atol=1e-3)
    np.testing.assert_allclose(a[1], b[1], atol=1e-4)


def test_batched_predictor_equals_the_loop_of_single_predictions(tiny_sam_checkpoint: Path):
    sam = sam_model_registry["bl_tiny"](checkpoint=tiny_sam_checkpoint, keep_ratio=0.25)
    images = [_image(2, (200, 240)), _image(3, (256, 180)), _image(4, (90, 256))]
    points = [np.array([[40.0, 50.0]]), np.array([[100.0, 30.0]]), np.array([[200.0, 60.0]])]
    batched = BatchedSamPredictor(sam, batch_size=2)
    batched.set_images(images)
    results = batched.predict_batch(point_coords=points, point_labels=[np.array([1])] * 3)
    single = SamPredictor(sam)
    for image, pts, (masks, iou, low_res) in zip(images, points, results):
        single.set_image(image)
        m, s, lr = single.predict(point_coords=pts, point_labels=np.array([1]))
        np.testing.assert_allclose(low_res, lr, atol=1e-4)
        np.testing.assert_allclose(iou, s, atol=1e-5)
        assert (masks != m).mean() < 1e-3  # a logit at the threshold may flip


def test_onnx_encoder_of_the_training_free_mode_matches_pytorch(
    tiny_sam_checkpoint: Path, tmp_path: Path
) -> None:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from biglittle_sam.export import compare_image_encoder, export_image_encoder

    sam = sam_model_registry["bl_tiny"](checkpoint=tiny_sam_checkpoint)
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(5))
    for ratio in (0.5, 1.0):
        path = export_image_encoder(sam, tmp_path / f"tf_r{ratio}.onnx", keep_ratio=ratio)
        assert compare_image_encoder(sam, path, x) < 1e-3  # test_export_onnx's tolerance
    assert sam.image_encoder.keep_ratio == 0.5  # export leaves the model as it was


def test_export_cli_takes_the_mode_from_a_spec(
    tiny_sam_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    pytest.importorskip("onnxruntime")
    from tools import export_onnx

    spec = f"bl_tiny={tiny_sam_checkpoint}@0.5"
    written = export_onnx.main(["--model", spec, "--out-dir", str(tmp_path), "--check"])
    assert written["encoder"].name == "bl_tiny_r0.5_encoder.onnx"
    out = capsys.readouterr().out
    diffs = [float(line.rsplit("=", 1)[1]) for line in out.splitlines() if "max abs diff" in line]
    assert len(diffs) == 2 and max(diffs) < 1e-3


def test_eval_agreement_takes_the_mode_from_a_spec(eval_shapes, tmp_path: Path, one_thread) -> None:
    """``bl_tiny=<proxy teacher>@R``: the teacher in the training-free mode, by the registry's
    rule, against the teacher itself; at R = 1 it agrees fully."""
    from tools.eval_miou import main

    reference = f"vit_tiny={TEACHER}"
    args = ["--images", str(eval_shapes.coco_images), "--reference", reference]
    args += ["--model", f"bl_tiny={TEACHER}@1", "--model", f"bl_tiny={TEACHER}@0.25"]
    args += ["--points-per-side", "4", "--device", "cpu", "--no-progress"]
    assert main(args + ["--out-dir", str(tmp_path), "--limit", "2"]) == 0
    result = read_json(tmp_path / "agreement_folder.json")
    exact, routed = result["models"]
    assert (exact["label"], routed["label"]) == ("bl_tiny@1", "bl_tiny@0.25")
    assert result["dataset"]["reference_masks"] > 0
    assert exact["agreement"]["miou"]["all"] > 99.9 and exact["agreement"]["share"]["all"] == 1.0
    assert routed["agreement"]["miou"]["all"] < exact["agreement"]["miou"]["all"]
    assert routed["gmacs"] < exact["gmacs"]
