"""ONNX export: the exported encoder and prompt decoder match PyTorch in onnxruntime (tiny SAM)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Callable, Dict

import numpy as np
import pytest
import torch
from segment_anything.utils.onnx import SamOnnxModel
from torch import nn

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from biglittle_sam import sam_model_registry  # noqa: E402
from biglittle_sam.config import BigLittleConfig  # noqa: E402
from biglittle_sam.export import (  # noqa: E402
    FP32_TOLERANCE,
    INT8_MIN_COSINE,
    MIN_OPSET,
    OnnxImageEncoder,
    check_image_encoder,
    check_prompt_decoder,
    compare_image_encoder,
    compare_prompt_decoder,
    export_image_encoder,
    export_prompt_decoder,
    max_opset,
    quantize_onnx,
    read_metadata,
)
from biglittle_sam.predictor import BatchedSamPredictor  # noqa: E402
from tools import export_onnx  # noqa: E402

TOL = 1e-3
BUILTIN_STUDENT = Path(__file__).resolve().parents[1] / "biglittle_sam/assets/proxy_student.pth"


def _tiny_biglittle(**overrides: object) -> torch.nn.Module:
    torch.manual_seed(0)
    sam = sam_model_registry["bl_tiny"](**overrides)
    # A fresh E-block has gamma 0 and changes nothing; give it weight so it is exported for real.
    for blk in sam.image_encoder.blocks:
        nn.init.normal_(blk.little.gamma, std=0.1)
    # A zero position embedding makes equal router scores on constant inputs, and ONNX and torch
    # break top-k ties differently (docs/export.md); trained models have none.
    nn.init.normal_(sam.image_encoder.pos_embed, std=0.02)
    return sam


@pytest.fixture(scope="module")
def bl_sam() -> torch.nn.Module:
    return _tiny_biglittle()


@pytest.fixture(scope="module")
def exported(bl_sam: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Files exported once per module: "r0.25", "r0.5", "r1" encoders and the "decoder"."""
    folder = tmp_path_factory.mktemp("onnx")
    cache: Dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            if name == "decoder":
                cache[name] = export_prompt_decoder(bl_sam, folder / "decoder.onnx")
            else:
                ratio = float(name[1:])
                cache[name] = export_image_encoder(
                    bl_sam, folder / f"{name}.onnx", keep_ratio=ratio
                )
        return cache[name]

    return get


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("ratio", [0.25, 0.5, 1.0])
def test_biglittle_encoder_matches_pytorch(
    bl_sam: nn.Module, image: torch.Tensor, exported: Callable[[str], Path], ratio: float
) -> None:
    path = exported(f"r{ratio:g}")
    assert bl_sam.image_encoder.keep_ratio == 0.5  # the model is left as it was
    encoder = OnnxImageEncoder(path, threads=1)
    assert encoder.keep_ratio == ratio and encoder.img_size == 256
    out = encoder(image)  # batch 2; batch 1 below: the batch dimension is dynamic
    assert out.shape == (2, 32, 16, 16)
    bl_sam.image_encoder.keep_ratio = ratio
    try:
        with torch.no_grad():
            expected = bl_sam.image_encoder(image)
    finally:
        bl_sam.image_encoder.keep_ratio = 0.5
    assert (out - expected).abs().max() < TOL
    assert compare_image_encoder(bl_sam, path, image[:1]) < TOL
    if ratio < 1.0:  # routing is in the graph: the dense encoder gives something else
        bl_sam.image_encoder.keep_ratio = 1.0
        try:
            with torch.no_grad():
                dense = bl_sam.image_encoder(image)
        finally:
            bl_sam.image_encoder.keep_ratio = 0.5
        assert (out - dense).abs().max() > 10 * TOL


@pytest.mark.skipif(
    "pool_kv" not in {f.name for f in dataclasses.fields(BigLittleConfig)},
    reason="this version has no pool_kv option",
)
def test_pooled_kv_encoder_matches_pytorch(image: torch.Tensor, tmp_path: Path) -> None:
    sam = _tiny_biglittle(pool_kv=True)
    path = export_image_encoder(sam, tmp_path / "pooled.onnx", keep_ratio=0.5)
    assert compare_image_encoder(sam, path, image) < TOL


@pytest.mark.parametrize("keep_ratio", [0.5, 0.25])
def test_trained_encoder_on_padded_image(tmp_path: Path, keep_ratio: float) -> None:
    """The packaged toy student on a real, padded input: routing agrees in the padded region too
    (a fresh model's zero position embedding makes ties there; docs/export.md). At r = 0.25 some
    windows hold fewer real tokens than they route, so padding tokens fill slots in their own
    order: a fixed 1e4 penalty rounded their logits into ties, which onnxruntime broke otherwise."""
    sam = sam_model_registry["bl_tiny"](checkpoint=BUILTIN_STUDENT, keep_ratio=keep_ratio)
    size = sam.image_encoder.img_size
    pixels = torch.rand(3, size * 3 // 4, size, generator=torch.Generator().manual_seed(2)) * 255
    x = sam.preprocess(pixels[None])  # 1 x 3 x S x S, the bottom quarter zero padding
    path = export_image_encoder(sam, tmp_path / "toy.onnx")
    assert read_metadata(path)["keep_ratio"] == str(keep_ratio)
    assert compare_image_encoder(sam, path, x) < TOL


def test_plain_sam_encoder_matches_pytorch(image: torch.Tensor, tmp_path: Path) -> None:
    torch.manual_seed(0)
    sam = sam_model_registry["vit_tiny"]()
    path = export_image_encoder(sam.image_encoder, tmp_path / "vit.onnx", keep_ratio=1.0)
    assert compare_image_encoder(sam, path, image) < TOL
    meta = read_metadata(path)
    assert meta["model_name"] == "vit_tiny" and meta["keep_ratio"] == "1.0"


def test_prompt_decoder_matches_sam_onnx_model(
    bl_sam: nn.Module, exported: Callable[[str], Path], tmp_path: Path
) -> None:
    path = exported("decoder")
    for points in (1, 4):
        assert compare_prompt_decoder(bl_sam, path, num_points=points) < TOL
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == [
        "image_embeddings",
        "point_coords",
        "point_labels",
        "mask_input",
        "has_mask_input",
        "orig_im_size",
    ]
    assert [o.name for o in session.get_outputs()] == ["masks", "iou_predictions", "low_res_masks"]

    # Upstream's default: all four masks; the single-mask decoder on request.
    assert read_metadata(path)["return_single_mask"] == "False"
    single = export_prompt_decoder(bl_sam, tmp_path / "single.onnx", return_single_mask=True)
    assert read_metadata(single)["return_single_mask"] == "True"
    assert compare_prompt_decoder(bl_sam, single) < TOL


def test_metadata(exported: Callable[[str], Path]) -> None:
    path = exported("r0.25")
    meta = read_metadata(path)
    assert meta["model_name"] == "bl_tiny"
    assert float(meta["keep_ratio"]) == 0.25
    assert meta["img_size"] == "256"
    assert meta["teacher"] == "vit_tiny"
    assert meta["kind"] == "image_encoder"
    assert [float(v) for v in meta["pixel_mean"].split(",")] == pytest.approx(
        [123.675, 116.28, 103.53]
    )
    # Written atomically: no temporary file is left beside the exports.
    assert all(not p.name.startswith(".") for p in path.parent.iterdir())
    dec = read_metadata(exported("decoder"))
    assert dec["kind"] == "prompt_decoder" and dec["model_name"] == "bl_tiny"


@pytest.mark.parametrize("ratio", [0, -0.5, 1.5, float("nan"), "half", "0.5", True])
def test_bad_keep_ratio(bl_sam: nn.Module, tmp_path: Path, ratio: object) -> None:
    with pytest.raises(ValueError, match=r"keep_ratio must be .*\(0, 1\]"):
        export_image_encoder(bl_sam, tmp_path / "x.onnx", keep_ratio=ratio)  # type: ignore
    assert not list(tmp_path.iterdir())


def test_plain_sam_rejects_ratio_below_one(tmp_path: Path) -> None:
    torch.manual_seed(0)
    sam = sam_model_registry["vit_tiny"]()
    with pytest.raises(ValueError, match="plain SAM and has no keep ratio below 1"):
        export_image_encoder(sam, tmp_path / "x.onnx", keep_ratio=0.5)


@pytest.mark.parametrize("opset", [9, MIN_OPSET - 1, "17", 17.0, None])
def test_bad_opset(bl_sam: nn.Module, tmp_path: Path, opset: object) -> None:
    opset = max_opset() + 1 if opset is None else opset
    with pytest.raises(ValueError, match=rf"opset.*from {MIN_OPSET} to {max_opset()}"):
        export_image_encoder(bl_sam, tmp_path / "x.onnx", opset=opset)  # type: ignore
    with pytest.raises(ValueError, match="opset"):
        export_prompt_decoder(bl_sam, tmp_path / "x.onnx", opset=opset)  # type: ignore
    assert not list(tmp_path.iterdir())


def test_bad_model_and_input(
    bl_sam: nn.Module, exported: Callable[[str], Path], tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="expected a segment_anything Sam .* got Linear"):
        export_image_encoder(nn.Linear(2, 2), tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="needs a whole segment_anything Sam"):
        export_prompt_decoder(bl_sam.image_encoder, tmp_path / "x.onnx")  # type: ignore
    with pytest.raises(ValueError, match="img_size must be the encoder's img_size 256"):
        export_image_encoder(bl_sam, tmp_path / "x.onnx", img_size=1024)
    with pytest.raises(FileNotFoundError, match="not found"):
        OnnxImageEncoder(tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match=r"B x 3 x 256 x 256"):
        OnnxImageEncoder(exported("r0.5"))(torch.zeros(1, 3, 128, 128))
    with pytest.raises(ValueError, match="not an image encoder export"):
        OnnxImageEncoder(exported("decoder"))


def test_cli_writes_and_checks(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        export_onnx.main(["--help"])
    assert info.value.code == 0 and "--keep-ratio" in capsys.readouterr().out
    written = export_onnx.main(
        ["--model", "bl_tiny", "--keep-ratio", "0.5", "--out-dir", str(tmp_path), "--check"]
    )
    assert written == {
        "encoder": tmp_path / "bl_tiny_r0.5_encoder.onnx",
        "decoder": tmp_path / "bl_tiny_decoder.onnx",
    }
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'bl_tiny_r0.5_encoder.onnx'}" in out
    diffs = [float(line.rsplit("=", 1)[1]) for line in out.splitlines() if "max abs diff" in line]
    assert len(diffs) == 2 and max(diffs) < TOL

    for bad in (["--keep-ratio", "2"], ["--opset", "11"], ["--checkpoint", "nope.pth"]):
        with pytest.raises(SystemExit) as e:
            export_onnx.main(["--model", "bl_tiny", "--out-dir", str(tmp_path)] + bad)
        assert e.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_missing_onnx_says_how_to_install(
    bl_sam: nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match=r'pip install "biglittle-sam\[export\]"'):
        export_image_encoder(bl_sam, tmp_path / "x.onnx")
    with pytest.raises(ImportError, match=r'pip install "biglittle-sam\[export\]"'):
        OnnxImageEncoder(tmp_path / "x.onnx")


def _decoder_feed(embedding: np.ndarray, coords: np.ndarray, labels: np.ndarray, size) -> dict:
    """Decoder inputs for K prompt sets (coords K x N x 2 in the input frame) on one image."""
    h, w = embedding.shape[-2:]
    return {
        "image_embeddings": embedding.astype(np.float32),
        "point_coords": coords.astype(np.float32),
        "point_labels": labels.astype(np.float32),
        "mask_input": np.zeros((1, 1, 4 * h, 4 * w), np.float32),
        "has_mask_input": np.zeros(1, np.float32),
        "orig_im_size": np.array(size, dtype=np.float32),
    }


def test_exported_decoder_takes_several_boxes_like_predict_batch(
    bl_sam: nn.Module, exported: Callable[[str], Path]
) -> None:
    image = np.random.default_rng(3).integers(0, 256, size=(120, 200, 3), dtype=np.uint8)
    boxes = np.array([[5, 5, 150, 100], [20, 10, 60, 70], [0, 0, 199, 119]])  # K = 3
    predictor = BatchedSamPredictor(bl_sam)
    predictor.set_images([image])
    ((masks, iou, low_res),) = predictor.predict_batch(box=[boxes], return_logits=True)
    corners = predictor.transform.apply_boxes(boxes, image.shape[:2]).reshape(3, 2, 2)
    labels = np.tile(np.array([[2.0, 3.0]]), (3, 1))  # (K, 2): SAM's box-corner labels
    session = ort.InferenceSession(str(exported("decoder")), providers=["CPUExecutionProvider"])
    embedding = predictor.get_image_embedding(0).numpy()
    out_masks, out_iou, out_low = session.run(
        None, _decoder_feed(embedding, corners, labels, image.shape[:2])
    )
    assert out_masks.shape == (3, 4, 120, 200)  # all four masks (upstream's default)
    # Outputs 1..3 are SAM's multimask outputs, as predict_torch returns them.
    np.testing.assert_allclose(out_masks[:, 1:], masks, atol=TOL, rtol=0)
    np.testing.assert_allclose(out_iou[:, 1:], iou, atol=TOL, rtol=0)
    np.testing.assert_allclose(out_low[:, 1:], low_res, atol=TOL, rtol=0)
    # Any image size: the crop to the resized image is not fixed at the traced example's.
    upstream = SamOnnxModel(bl_sam, return_single_mask=False).eval()
    for size in ((120, 200), (300, 100), (192, 256)):
        feed = _decoder_feed(embedding, corners, labels, size)
        with torch.no_grad():
            ref = upstream(*(torch.from_numpy(feed[k]) for k in feed))[0]
        got = session.run(None, feed)[0]
        assert got.shape == (3, 4, *size)
        np.testing.assert_allclose(got, ref.numpy(), atol=TOL, rtol=0)
    # One box at a time gives the same rows.
    alone, _, _ = session.run(None, _decoder_feed(embedding, corners[1:2], labels[:1], (120, 200)))
    np.testing.assert_allclose(alone[0], out_masks[1], atol=TOL, rtol=0)


def _ops(path: Path) -> set:
    import onnx

    return {node.op_type for node in onnx.load(str(path)).graph.node}


def test_decoder_flags_gelu_stability_single_mask_and_extra_metrics(
    bl_sam: nn.Module, tmp_path: Path
) -> None:
    from segment_anything.utils.amg import calculate_stability_score

    path = export_prompt_decoder(
        bl_sam,
        tmp_path / "flags.onnx",
        return_single_mask=True,
        use_stability_score=True,
        gelu_approximate=True,
    )
    meta = read_metadata(path)
    assert (meta["gelu_approximate"], meta["use_stability_score"]) == ("True", "True")
    assert all(m.approximate == "none" for m in bl_sam.modules() if isinstance(m, nn.GELU))
    assert "Erf" not in _ops(path) and "Tanh" in _ops(path)  # GELU exported as tanh
    result = check_prompt_decoder(bl_sam, path, num_points=2, num_prompts=3)
    assert result.max_abs < TOL and result.passes(quantized=False)
    corners = np.array([[[10.0, 10.0], [200.0, 180.0]], [[50.0, 60.0], [90.0, 100.0]]])
    feed = _decoder_feed(
        np.random.default_rng(0).normal(size=(1, 32, 16, 16)),
        corners,
        np.array([[2.0, 3.0], [2.0, 3.0]]),
        (192, 256),
    )
    masks, scores, low_res = ort.InferenceSession(
        str(path), providers=["CPUExecutionProvider"]
    ).run(None, feed)
    assert masks.shape == (2, 1, 192, 256) and scores.shape == (2, 1)
    stability = calculate_stability_score(torch.from_numpy(low_res), bl_sam.mask_threshold, 1.0)
    np.testing.assert_allclose(scores, stability.numpy(), atol=1e-5)  # not the predicted IoU

    exact = export_prompt_decoder(bl_sam, tmp_path / "exact.onnx", return_extra_metrics=True)
    assert "Erf" in _ops(exact)
    session = ort.InferenceSession(str(exact), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == [
        "masks",
        "iou_predictions",
        "stability_scores",
        "areas",
        "low_res_masks",
    ]
    assert compare_prompt_decoder(bl_sam, exact) < TOL


def test_int8_copies_stay_close_to_fp32(tmp_path: Path) -> None:
    sam = sam_model_registry["bl_tiny"](checkpoint=BUILTIN_STUDENT, keep_ratio=0.25)
    encoder = export_image_encoder(sam, tmp_path / "enc.onnx")
    decoder = export_prompt_decoder(sam, tmp_path / "dec.onnx")
    for path, check in ((encoder, check_image_encoder), (decoder, check_prompt_decoder)):
        quantized = quantize_onnx(path, tmp_path / f"{path.stem}_int8.onnx")
        assert "MatMulInteger" in _ops(quantized) and "MatMulInteger" not in _ops(path)
        meta = read_metadata(quantized)
        assert (
            meta["quantized"].startswith("dynamic int8")
            and meta["kind"] == read_metadata(path)["kind"]
        )
        result = check(sam, quantized)
        assert result.min_cosine >= INT8_MIN_COSINE and result.passes(quantized=True)
        assert result.max_abs > check(sam, path).max_abs  # it is quantized for real
    with pytest.raises(ValueError, match="weight_type must be one of"):
        quantize_onnx(encoder, tmp_path / "x.onnx", weight_type="int4")
    with pytest.raises(ValueError, match="must not replace its source"):
        quantize_onnx(encoder, encoder)


def test_cli_upstream_flags_quantize_and_check(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert (export_onnx.FP32_TOLERANCE, export_onnx.INT8_MIN_COSINE) == (
        FP32_TOLERANCE,
        INT8_MIN_COSINE,
    )
    args = ["--model", "bl_tiny", "--checkpoint", str(BUILTIN_STUDENT), "--out-dir", str(tmp_path)]
    written = export_onnx.main(
        args + ["--return-single-mask", "--gelu-approximate", "--quantize-out", "--check"]
    )
    assert set(written) == {"encoder", "decoder", "encoder_int8", "decoder_int8"}
    assert written["decoder_int8"] == tmp_path / "bl_tiny_decoder_int8.onnx"
    meta = read_metadata(written["decoder"])
    assert meta["return_single_mask"] == "True"
    assert read_metadata(written["encoder"])["gelu_approximate"] == "True"
    out = capsys.readouterr().out
    assert out.count("check: ") == 4 and "min cosine" in out and "(tolerance 0.001)" in out

    # Upstream's three flags together, in fp32: the single mask picked by stability score is the
    # same in onnxruntime and PyTorch (an empty mask's 0 / 0 = NaN score once made them differ).
    both = ["--return-single-mask", "--gelu-approximate", "--use-stability-score", "--check"]
    stability = export_onnx.main(args + both + ["--out-dir", str(tmp_path / "s")])
    meta = read_metadata(stability["decoder"])
    assert meta["return_single_mask"] == "True" and meta["use_stability_score"] == "True"
    assert capsys.readouterr().out.count("check: ") == 2
    with pytest.raises(SystemExit) as info:  # beyond a stated tolerance: exit 1
        export_onnx.main(args + ["--skip-decoder", "--check", "--check-tolerance", "1e-12"])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "--check failed for encoder" in err
    for bad in (["--return-single-mask", "--multimask"], ["--check-tolerance", "0"]):
        with pytest.raises(SystemExit) as info:
            export_onnx.main(args + bad)
        assert info.value.code == 2


def test_onnx_profile_sums_kernel_time_per_operator_type(
    exported: Callable[[str], Path], tmp_path: Path, capsys
) -> None:
    from biglittle_sam.export.profile import node_times, profile_onnx_encoder
    from tools import profile_encoder

    result = profile_onnx_encoder(exported("r0.25"), runs=2, threads=1)
    ops = {o.op_type: o for o in result.ops}
    assert "MatMul" in ops and "TopK" in ops  # the routing is in the graph, and profiled
    assert abs(sum(o.share for o in result.ops) - 1.0) < 1e-6
    assert result.kernel_ms == pytest.approx(sum(o.ms_per_run for o in result.ops))
    assert 0 < result.kernel_ms and 0 < result.run_ms
    assert [o.ms_per_run for o in result.ops] == sorted(
        (o.ms_per_run for o in result.ops), reverse=True
    )
    # hand-made events: only the kernel-time events count, summed per op type
    events = [
        {"cat": "Node", "name": "a_kernel_time", "dur": 5, "args": {"op_name": "MatMul"}},
        {"cat": "Node", "name": "a_fence_before", "dur": 9, "args": {"op_name": "MatMul"}},
        {"cat": "Node", "name": "b_kernel_time", "dur": 7, "args": {"op_name": "MatMul"}},
        {"cat": "Session", "name": "model_run", "dur": 100},
    ]
    assert node_times(events) == {"MatMul": {"us": 12.0, "count": 2.0}}
    out = tmp_path / "profile.json"
    report = profile_encoder.main(
        ["--onnx", str(exported("r0.25")), "--steps", "1", "--threads", "1", "--output", str(out)]
    )
    assert (
        report["ops"] and out.is_file() and "| operator | ms per run |" in capsys.readouterr().out
    )
    with pytest.raises(SystemExit):
        profile_encoder.main(["--onnx", str(exported("r0.25")), "--keep-ratio", "0.5"])
    with pytest.raises(SystemExit):
        profile_encoder.main(["--onnx", str(tmp_path / "missing.onnx")])
