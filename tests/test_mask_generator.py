"""FastAutomaticMaskGenerator returns upstream's masks: checked against SamAutomaticMaskGenerator on
the packaged proxy teacher (trained, so masks pass the filters) and the demo's example images."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest
import torch
from PIL import Image
from segment_anything import SamAutomaticMaskGenerator

from biglittle_sam import sam_model_registry
from biglittle_sam.amg import build_mask_generator
from biglittle_sam.demo.examples import write_example_images
from biglittle_sam.mask_generator import (
    CPU_DECODER_BATCH,
    FastAutomaticMaskGenerator,
    predict_masks_one_image,
)

ASSETS = Path(__file__).resolve().parents[1] / "biglittle_sam" / "assets"


@pytest.fixture(scope="module")
def teacher() -> Any:
    return sam_model_registry["vit_tiny"](checkpoint=ASSETS / "proxy_teacher.pth").eval()


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> List[np.ndarray]:
    paths = write_example_images(tmp_path_factory.mktemp("examples"))
    return [np.array(Image.open(p).convert("RGB")) for p in paths]


def _assert_same(ours: List[Dict[str, Any]], upstream: List[Dict[str, Any]]) -> None:
    assert len(ours) == len(upstream)
    for a, b in zip(ours, upstream):
        assert a["bbox"] == b["bbox"] and a["area"] == b["area"]
        assert a["point_coords"] == b["point_coords"] and a["crop_box"] == b["crop_box"]
        seg_a, seg_b = a["segmentation"], b["segmentation"]
        if isinstance(seg_a, dict):  # coco_rle
            assert seg_a == seg_b
        else:
            assert np.array_equal(seg_a, seg_b)
        assert a["predicted_iou"] == pytest.approx(b["predicted_iou"], abs=1e-5)
        # an empty mask's stability score is 0 / 0 (nan) in both
        assert a["stability_score"] == pytest.approx(b["stability_score"], abs=1e-5, nan_ok=True)


@pytest.mark.parametrize(
    "settings",
    [
        {"pred_iou_thresh": 0.5, "stability_score_thresh": 0.8},
        {"pred_iou_thresh": 0.5, "stability_score_thresh": 0.8, "crop_n_layers": 1},
        {"pred_iou_thresh": 0.5, "stability_score_thresh": 0.8, "output_mode": "coco_rle"},
        {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "points_per_batch": 20},
    ],
    ids=["filters", "crops", "rle", "no-filters"],
)
def test_same_masks_as_upstream(teacher: Any, images: List[np.ndarray], settings: Dict) -> None:
    kept = 0
    for image in images:
        upstream = SamAutomaticMaskGenerator(teacher, points_per_side=8, **settings)
        # an odd chunk, so that batches end in a partial chunk
        ours = FastAutomaticMaskGenerator(teacher, decoder_batch=3, points_per_side=8, **settings)
        expected = upstream.generate(image)
        _assert_same(ours.generate(image), expected)
        kept += len(expected)
    assert kept > 0  # the comparison saw masks


def test_only_masks_that_pass_the_iou_filter_are_upsampled(
    teacher: Any, images: List[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    upsampled: List[int] = []
    decoded: List[int] = []
    postprocess, transformer = teacher.postprocess_masks, teacher.mask_decoder.transformer.forward

    def count_postprocess(masks: torch.Tensor, *args: Any) -> torch.Tensor:
        upsampled.append(masks.shape[0] * masks.shape[1])
        return postprocess(masks, *args)

    def count_decode(image: torch.Tensor, pe: torch.Tensor, tokens: torch.Tensor) -> Any:
        assert image.shape[0] == pe.shape[0] == 1  # the image once, not one copy per point
        decoded.append(tokens.shape[0])
        return transformer(image, pe, tokens)

    monkeypatch.setattr(teacher, "postprocess_masks", count_postprocess)
    monkeypatch.setattr(teacher.mask_decoder.transformer, "forward", count_decode)
    generator = FastAutomaticMaskGenerator(teacher, points_per_side=4, pred_iou_thresh=0.5)
    passing = []
    original = generator._decode

    def record(coords: torch.Tensor, labels: torch.Tensor) -> Any:
        low, iou = original(coords, labels)
        passing.append(int((iou > 0.5).sum()))
        return low, iou

    monkeypatch.setattr(generator, "_decode", record)
    generator.generate(images[0])
    assert decoded == [CPU_DECODER_BATCH] * (16 // CPU_DECODER_BATCH)  # 16 points, in chunks
    assert upsampled == passing and sum(upsampled) < 16 * 3  # upstream upsamples all 48


def test_crops_that_keep_no_mask_give_no_masks(teacher: Any, images: List[np.ndarray]) -> None:
    """Upstream's generator fails when every crop comes back empty (``box_area`` of a 0-length
    tensor); ours returns an empty list."""
    settings = {"points_per_side": 4, "crop_n_layers": 1, "pred_iou_thresh": 0.999}
    with pytest.raises(IndexError):
        SamAutomaticMaskGenerator(teacher, **settings).generate(images[0])
    assert FastAutomaticMaskGenerator(teacher, **settings).generate(images[0]) == []


def test_bad_decoder_batch_and_generator_are_refused(teacher: Any) -> None:
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="decoder_batch"):
            FastAutomaticMaskGenerator(teacher, decoder_batch=bad)
    with pytest.raises(ValueError, match="unknown generator"):
        build_mask_generator("vit_tiny", device="cpu", generator="quick")
    with pytest.raises(ValueError, match="fast generator"):
        build_mask_generator("vit_tiny", device="cpu", generator="upstream", decoder_batch=4)
    fast = build_mask_generator("vit_tiny", device="cpu", decoder_batch=2)
    assert isinstance(fast, FastAutomaticMaskGenerator) and fast.decoder_batch == 2
    upstream = build_mask_generator("vit_tiny", device="cpu", generator="upstream")
    assert type(upstream) is SamAutomaticMaskGenerator


def test_one_image_decoding_equals_upstreams_decoder(teacher: Any) -> None:
    """The decoder on one image embedding (broadcast over the prompts) against upstream's on one
    copy per prompt: the same logits and IoUs, for one and three masks, any batch size."""
    gen = torch.Generator().manual_seed(0)
    pe = teacher.prompt_encoder
    embedding = torch.randn(1, pe.embed_dim, *pe.image_embedding_size, generator=gen)
    for batch, multimask in ((1, True), (5, True), (5, False)):
        coords = torch.rand(batch, 2, 2, generator=gen) * teacher.image_encoder.img_size
        labels = torch.tensor([[1, 0]] * batch)
        with torch.no_grad():
            sparse, dense = pe(points=(coords, labels), boxes=None, masks=None)
            expected = teacher.mask_decoder(
                image_embeddings=embedding,
                image_pe=pe.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask,
            )
            got = predict_masks_one_image(
                teacher.mask_decoder, embedding, pe.get_dense_pe(), sparse, dense[:1], multimask
            )
        for a, b in zip(got, expected):
            assert a.shape == b.shape
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="one image"):
        predict_masks_one_image(
            teacher.mask_decoder, embedding.expand(2, -1, -1, -1), pe.get_dense_pe(), sparse,
            dense[:1],
        )  # fmt: skip
