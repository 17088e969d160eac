"""Batched encoding: ``set_images`` and ``predict_batch`` equal a loop of single predictions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor

from biglittle_sam import sam_model_registry
from biglittle_sam.predictor import BatchedSamPredictor

from .conftest import randomize_

# Different sizes and aspect ratios: landscape, portrait at the full side (no resize), tiny square.
SIZES = [(90, 160), (256, 200), (40, 40)]


def _images() -> list:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for h, w in SIZES]


def _model(name: str) -> torch.nn.Module:
    kwargs = {"keep_ratio": 0.5} if name.startswith("bl_") else {}
    sam = sam_model_registry[name](**kwargs)
    # Noise everywhere: E-blocks (gamma), routers and rel-pos tables all take part.
    return randomize_(sam, std=0.05)


# One prompt set per image: points only, points and a box, a box only.
POINTS = [np.array([[10, 20], [130, 60]]), np.array([[100, 180]]), None]
LABELS = [np.array([1, 0]), np.array([1]), None]
BOXES = [None, np.array([5, 5, 150, 200]), np.array([0, 0, 30, 30])]


@pytest.mark.parametrize("name", ["vit_tiny", "bl_tiny"])
@pytest.mark.parametrize("batch_size", [None, 2])
def test_batched_equals_loop_of_single_predictions(name: str, batch_size) -> None:
    sam = _model(name)
    images = _images()
    batched = BatchedSamPredictor(sam)
    batched.set_images(images, batch_size=batch_size)
    assert batched.num_images == 3
    assert batched.get_image_embedding().shape == (3, 32, 16, 16)
    results = batched.predict_batch(POINTS, LABELS, BOXES, multimask_output=True)
    single = SamPredictor(sam)
    for i, image in enumerate(images):
        single.set_image(image)
        masks, iou, low_res = single.predict(POINTS[i], LABELS[i], BOXES[i])
        got_masks, got_iou, got_low_res = results[i]
        assert got_masks.shape == (3, *SIZES[i]) and got_masks.dtype == bool
        np.testing.assert_array_equal(got_masks, masks)
        np.testing.assert_allclose(got_iou, iou, atol=1e-4, rtol=0)
        np.testing.assert_allclose(got_low_res, low_res, atol=1e-4, rtol=0)
        torch.testing.assert_close(
            batched.get_image_embedding(i), single.get_image_embedding(), atol=1e-5, rtol=0
        )


def test_single_image_api_still_works() -> None:
    sam = _model("bl_tiny")
    image = _images()[0]
    batched = BatchedSamPredictor(sam)
    batched.set_image(image)  # SamPredictor's API, through set_images([image])
    masks, iou, _ = batched.predict(box=np.array([10, 10, 80, 70]), multimask_output=False)
    single = SamPredictor(sam)
    single.set_image(image)
    ref, ref_iou, _ = single.predict(box=np.array([10, 10, 80, 70]), multimask_output=False)
    np.testing.assert_array_equal(masks, ref)
    np.testing.assert_allclose(iou, ref_iou, atol=1e-4, rtol=0)


def test_bgr_input_and_select_image() -> None:
    sam = _model("vit_tiny")
    images = _images()
    rgb = BatchedSamPredictor(sam)
    rgb.set_images(images)
    bgr = BatchedSamPredictor(sam, batch_size=1)
    bgr.set_images([im[..., ::-1].copy() for im in images], image_format="BGR")
    torch.testing.assert_close(bgr.get_image_embedding(), rgb.get_image_embedding())
    bgr.select_image(2)
    assert bgr.original_size == SIZES[2] and bgr.current_index == 2
    # predict_batch leaves the current image where it was.
    bgr.predict_batch(box=[np.array([0, 0, 10, 10])] * 3)
    assert bgr.current_index == 2


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((32, 32), dtype=np.uint8), r"images\[1\]: expected an H x W x 3 uint8"),
        (np.zeros((32, 32, 4), dtype=np.uint8), r"images\[1\].*shape \(32, 32, 4\)"),
        (np.zeros((32, 32, 3), dtype=np.float32), r"images\[1\].*float32"),
        (np.zeros((0, 32, 3), dtype=np.uint8), r"images\[1\]"),
        ("image.png", r"images\[1\].*got str"),
    ],
)
def test_bad_images_are_named(bad, match: str) -> None:
    predictor = BatchedSamPredictor(_model("vit_tiny"))
    with pytest.raises(ValueError, match=match):
        predictor.set_images([_images()[0], bad])
    assert not predictor.is_image_set


def test_bad_calls() -> None:
    predictor = BatchedSamPredictor(_model("vit_tiny"))
    with pytest.raises(RuntimeError, match="set_images"):
        predictor.predict_batch(box=[np.array([0, 0, 5, 5])])
    with pytest.raises(ValueError, match="empty"):
        predictor.set_images([])
    with pytest.raises(ValueError, match="sequence of H x W x 3"):
        predictor.set_images(_images()[0])
    with pytest.raises(ValueError, match="image_format"):
        predictor.set_images(_images(), image_format="HSV")
    with pytest.raises(ValueError, match="batch_size"):
        predictor.set_images(_images(), batch_size=0)
    predictor.set_images(_images()[:2])
    with pytest.raises(ValueError, match=r"one entry per image \(2\), got 1 entries"):
        predictor.predict_batch(box=[np.array([0, 0, 5, 5])])
    with pytest.raises(ValueError, match="without point_labels"):
        predictor.predict_batch(point_coords=[np.array([[1, 1]])] * 2)
    with pytest.raises(IndexError, match="out of range"):
        predictor.select_image(2)


# Several boxes per image, as SamPredictor.predict_torch takes them; image 1 gets none.
MULTI_BOXES = [
    np.array([[5, 5, 150, 80], [20, 10, 60, 70], [0, 0, 159, 89]]),
    None,
    np.array([[0, 0, 30, 30]]),
]


@pytest.mark.parametrize("name", ["vit_tiny", "bl_tiny"])
def test_several_boxes_per_image_equal_predict_torch_and_single_boxes(name: str) -> None:
    sam = _model(name)
    images = _images()
    batched = BatchedSamPredictor(sam)
    batched.set_images(images)
    results = batched.predict_batch(box=MULTI_BOXES, multimask_output=True, return_logits=True)
    single = SamPredictor(sam)
    for i, image in enumerate(images):
        single.set_image(image)
        masks, iou, low_res = results[i]
        if MULTI_BOXES[i] is None:  # no prompt: SamPredictor.predict's own output
            assert masks.shape == (3, *SIZES[i])
            continue
        k = len(MULTI_BOXES[i])
        assert masks.shape == (k, 3, *SIZES[i]) and iou.shape == (k, 3)
        assert low_res.shape == (k, 3, 64, 64)
        boxes = single.transform.apply_boxes_torch(
            torch.as_tensor(MULTI_BOXES[i], dtype=torch.float), image.shape[:2]
        )
        ref = single.predict_torch(None, None, boxes, multimask_output=True, return_logits=True)
        for got, want in zip((masks, iou, low_res), ref):
            np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=0)
        for j, box in enumerate(MULTI_BOXES[i]):  # each box alone, through predict
            one_masks, one_iou, _ = single.predict(box=box, return_logits=True)
            np.testing.assert_allclose(masks[j], one_masks, atol=1e-3, rtol=0)
            np.testing.assert_allclose(iou[j], one_iou, atol=1e-4, rtol=0)


def test_several_boxes_with_their_own_points_and_bad_shapes() -> None:
    sam = _model("bl_tiny")
    image = _images()[0]
    batched = BatchedSamPredictor(sam)
    batched.set_images([image])
    boxes = MULTI_BOXES[0][:2]
    coords = np.array([[[40, 40]], [[30, 30]]])  # (K=2, N=1, 2)
    labels = np.array([[1], [0]])
    ((masks, iou, _),) = batched.predict_batch([coords], [labels], [boxes], multimask_output=False)
    assert masks.shape == (2, 1, *image.shape[:2]) and masks.dtype == bool
    single = SamPredictor(sam)
    single.set_image(image)
    for j in range(2):
        one, one_iou, _ = single.predict(coords[j], labels[j], boxes[j], multimask_output=False)
        assert (masks[j] != one).mean() < 1e-3  # the same mask up to float rounding at 0
        np.testing.assert_allclose(iou[j], one_iou, atol=1e-4, rtol=0)
    with pytest.raises(
        ValueError, match=r"point_coords\[0\]: with 2 boxes expected shape 2 x N x 2"
    ):
        batched.predict_batch([coords[0]], [labels[0]], [boxes])
    with pytest.raises(ValueError, match=r"point_labels\[0\]: with 2 boxes expected shape 2 x 1"):
        batched.predict_batch([coords], [labels[:1]], [boxes])
    with pytest.raises(ValueError, match=r"box\[0\]: expected a K x 4 array"):
        batched.predict_batch(box=[np.zeros((2, 3))])
    with pytest.raises(ValueError, match=r"box\[0\]: expected a length-4 array .* or a K x 4"):
        batched.predict_batch(box=[np.zeros(5)])
