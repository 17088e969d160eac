"""The swap for transformers users: a stock ``SamModel`` with the big.LITTLE encoder.

Every model here is built in-process with a size the project never registered (nothing is
downloaded): 48 wide, 3 layers of 3 heads, windows of 4 on a 12 x 12 grid (so windows pad), one
global layer, a 2x MLP, 192-pixel images. At keep ratio 1 the swapped model must give the stock
model's masks and IoU scores; below 1 it must survive ``save_pretrained`` / ``from_pretrained``
bit for bit (transformers 5 builds on the meta device) and load through ``AutoModel`` and
``pipeline("mask-generation")`` after ``import biglittle_sam``.
"""

from __future__ import annotations

import json
from typing import Any, Dict

import numpy as np
import pytest
import torch

pytest.importorskip("transformers", minversion="5.0")

from PIL import Image  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import AutoModel, SamConfig, SamModel, pipeline  # noqa: E402

import biglittle_sam.hf as blhf  # noqa: E402
from biglittle_sam.checkpoint import CheckpointError  # noqa: E402
from biglittle_sam.hf.convert import processor_for  # noqa: E402

SIZE = 192
VISION: Dict[str, Any] = dict(
    hidden_size=48,
    num_hidden_layers=3,
    num_attention_heads=3,
    global_attn_indexes=[1],
    window_size=5,
    image_size=SIZE,
    output_channels=24,
    num_pos_feats=12,
    mlp_dim=96,
)
PROMPT = dict(hidden_size=24, image_size=SIZE, mask_input_channels=4)
DECODER = dict(hidden_size=24, num_hidden_layers=2, num_attention_heads=2, mlp_dim=64)
DECODER.update(iou_head_hidden_dim=32)


def stock_config(**vision: Any) -> SamConfig:
    return SamConfig(
        vision_config={**VISION, **vision},
        prompt_encoder_config=PROMPT,
        mask_decoder_config=DECODER,
    )


@pytest.fixture(scope="module")
def stock() -> SamModel:
    """A stock SamModel with random weights everywhere (transformers zeroes rel-pos and pos)."""
    torch.manual_seed(0)
    model = SamModel(stock_config()).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """2 x 3 x 192 x 192 pixel values, the bottom rows zero (SamProcessor's padding)."""
    torch.manual_seed(1)
    x = torch.randn(2, 3, SIZE, SIZE)
    x[:, :, 150:] = 0
    return x


POINTS = torch.tensor([[[[40.0, 50.0], [120.0, 90.0]]], [[[100.0, 30.0], [10.0, 170.0]]]])
LABELS = torch.tensor([[[1, 0]], [[1, 1]]])
BOXES = torch.tensor([[[10.0, 20.0, 150.0, 140.0]], [[30.0, 30.0, 100.0, 180.0]]])


def run(model: torch.nn.Module, images: torch.Tensor, **kwargs: Any) -> Any:
    with torch.no_grad():
        return model(pixel_values=images, **kwargs)


@pytest.mark.parametrize(
    "prompts",
    [dict(input_points=POINTS, input_labels=LABELS), dict(input_boxes=BOXES)],
    ids=["points", "boxes"],
)
def test_at_keep_ratio_1_the_swap_is_the_stock_model(stock, images, prompts) -> None:
    swapped = blhf.to_biglittle(stock, keep_ratio=1.0)
    assert isinstance(swapped, blhf.BigLittleSamModel) and not swapped.training
    a, b = run(stock, images, **prompts), run(swapped, images, **prompts)
    assert (a.pred_masks - b.pred_masks).abs().max() <= 1e-5
    assert (a.iou_scores - b.iou_scores).abs().max() <= 1e-5
    assert a.pred_masks.abs().max() > 0.01  # not a trivially equal pair of zeros


def test_hidden_states_and_batching_match_stock(stock, images) -> None:
    swapped = blhf.to_biglittle(stock, keep_ratio=1.0)
    a = run(stock, images, input_points=POINTS, output_hidden_states=True)
    b = run(swapped, images, input_points=POINTS, output_hidden_states=True)
    assert len(b.vision_hidden_states) == len(a.vision_hidden_states) == 4  # input + 3 layers
    for x, y in zip(a.vision_hidden_states, b.vision_hidden_states):
        assert x.shape == y.shape and (x - y).abs().max() <= 1e-5
    # One image at a time gives the batch's rows (r < 1: routing is per image).
    swapped.keep_ratio = 0.4
    both = run(swapped, images, input_points=POINTS).pred_masks
    for i in range(2):
        one = run(swapped, images[i : i + 1], input_points=POINTS[i : i + 1]).pred_masks
        torch.testing.assert_close(one[0], both[i], atol=1e-5, rtol=0)


def test_keep_ratio_per_call_per_model_and_in_a_context(stock, images) -> None:
    swapped = blhf.to_biglittle(stock)  # default 0.5, training-free
    assert swapped.keep_ratio == 0.5 and swapped.config.vision_config.biglittle["training_free"]
    dense = run(stock, images, input_points=POINTS).pred_masks
    half = run(swapped, images, input_points=POINTS).pred_masks
    quarter = run(swapped, images, input_points=POINTS, keep_ratio=0.25).pred_masks
    assert torch.isfinite(quarter).all() and not torch.allclose(half, quarter)
    assert (half - dense).abs().max() > 1e-4  # routing changes the masks
    with swapped.keep_ratio_context(0.25):
        torch.testing.assert_close(run(swapped, images, input_points=POINTS).pred_masks, quarter)
    swapped.keep_ratio = 0.25
    assert swapped.config.vision_config.biglittle["keep_ratio"] == 0.25
    torch.testing.assert_close(run(swapped, images, input_points=POINTS).pred_masks, quarter)
    embeddings = swapped.get_image_embeddings(images, keep_ratio=1.0)
    torch.testing.assert_close(embeddings, stock.get_image_embeddings(images), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"keep_ratio must be in \(0, 1\]"):
        run(swapped, images, input_points=POINTS, keep_ratio=1.5)
    with pytest.raises(ValueError, match=r"keep_ratio must be in \(0, 1\]"):
        blhf.to_biglittle(stock, keep_ratio=0.0)


def test_save_and_reload_at_r_below_1_is_exact(stock, images, tmp_path) -> None:
    swapped = blhf.to_biglittle(stock, keep_ratio=0.4, token_score="window_mean")
    swapped.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "biglittle_sam"
    assert config["vision_config"]["model_type"] == "biglittle_sam_vision_model"
    assert config["vision_config"]["biglittle"]["token_score"] == "window_mean"
    assert (tmp_path / "model.safetensors").is_file()
    # AutoModel: transformers 5 builds on the meta device, then loads; nothing may stay empty.
    reloaded = AutoModel.from_pretrained(tmp_path)
    assert type(reloaded) is blhf.BigLittleSamModel and reloaded.keep_ratio == 0.4
    a = run(swapped, images, input_points=POINTS)
    b = run(reloaded, images, input_points=POINTS)
    assert torch.isfinite(b.pred_masks).all()
    assert torch.equal(a.pred_masks, b.pred_masks) and torch.equal(a.iou_scores, b.iou_scores)


def test_dtype_and_device_map_on_cpu(stock, images, tmp_path) -> None:
    blhf.to_biglittle(stock, keep_ratio=1.0).save_pretrained(tmp_path)
    model = AutoModel.from_pretrained(tmp_path, dtype=torch.bfloat16, device_map="cpu")
    assert model.dtype == torch.bfloat16 and model.device.type == "cpu"
    out = run(model, images.bfloat16(), input_boxes=BOXES.bfloat16())
    ref = run(stock, images, input_boxes=BOXES)
    assert out.pred_masks.dtype == torch.bfloat16 and torch.isfinite(out.pred_masks).all()
    scale = ref.pred_masks.abs().max()
    assert (out.pred_masks.float() - ref.pred_masks).abs().max() <= 0.1 * scale


def test_mask_generation_pipeline_from_a_saved_folder(stock, tmp_path) -> None:
    processor = processor_for(SIZE)
    folders = {}
    for name, model in (("stock", stock), ("bl", blhf.to_biglittle(stock, keep_ratio=1.0))):
        folders[name] = tmp_path / name
        model.save_pretrained(folders[name])
        processor.save_pretrained(folders[name])
    image = Image.fromarray((np.random.RandomState(0).rand(150, 180, 3) * 255).astype(np.uint8))
    settings = dict(points_per_batch=16, points_per_crop=4, pred_iou_thresh=0)
    settings.update(stability_score_thresh=0)
    out = {
        name: pipeline("mask-generation", model=str(d))(image, **settings)
        for name, d in folders.items()
    }
    assert len(out["bl"]["masks"]) == len(out["stock"]["masks"]) >= 1
    for a, b in zip(out["stock"]["masks"], out["bl"]["masks"]):
        assert a.shape == (150, 180) and np.array_equal(a, b)


def test_a_stock_folder_is_refused_by_name_never_loaded_at_random(stock, images, tmp_path) -> None:
    stock.save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="missing keys .*vision_encoder.image_encoder"):
        blhf.BigLittleSamModel.from_pretrained(tmp_path)
    # ... and swapped by name instead, recording where SAM's weights came from.
    swapped = blhf.to_biglittle(str(tmp_path), keep_ratio=1.0)
    assert swapped.config.vision_config.teacher_checkpoint == str(tmp_path)
    a, b = run(stock, images, input_boxes=BOXES), run(swapped, images, input_boxes=BOXES)
    assert (a.pred_masks - b.pred_masks).abs().max() <= 1e-5


def test_missing_and_unexpected_weights_are_named(stock, tmp_path) -> None:
    blhf.to_biglittle(stock).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    state = load_file(weights)
    dropped = "vision_encoder.image_encoder.blocks.2.mlp.lin1.weight"
    del state[dropped]
    state["vision_encoder.image_encoder.blocks.2.extra"] = torch.zeros(3)
    save_file(state, weights, metadata={"format": "pt"})
    with pytest.raises(CheckpointError) as error:
        AutoModel.from_pretrained(tmp_path)
    assert dropped in str(error.value) and "blocks.2.extra" in str(error.value)


def test_bad_configs_fail_when_made(stock) -> None:
    with pytest.raises(ValueError, match="image_size is 256, but vision_config.image_size is 192"):
        blhf.BigLittleSamConfig(
            vision_config=VISION, prompt_encoder_config=dict(PROMPT, image_size=256)
        )
    with pytest.raises(ValueError, match="image_embedding_size is 24, but the vision grid"):
        blhf.BigLittleSamConfig(
            vision_config=VISION, prompt_encoder_config=dict(PROMPT, patch_size=8)
        )
    with pytest.raises(ValueError, match=r"keep_ratio must be in \(0, 1\]"):
        blhf.BigLittleSamVisionConfig(**VISION, biglittle={"keep_ratio": 2})
    with pytest.raises(ValueError, match="unknown fields \\['bogus'\\]"):
        blhf.BigLittleSamVisionConfig(**VISION, biglittle={"bogus": 1})
    with pytest.raises(ValueError, match="token_score must be one of"):
        blhf.to_biglittle(stock, token_score="nope")
    with pytest.raises(ValueError, match="hidden_act='relu'"):
        blhf.to_biglittle(SamModel(stock_config(hidden_act="relu")))
    with pytest.raises(TypeError, match="expected a transformers SamModel"):
        blhf.to_biglittle(torch.nn.Linear(2, 2))


def test_slimsam_shaped_models_swap(images) -> None:
    """SlimSAM's pruned models keep SAM's shape with narrower MLPs (mlp_dim not 4 x width)."""
    torch.manual_seed(2)
    slim = SamModel(stock_config(mlp_dim=70)).eval()
    swapped = blhf.to_biglittle(slim, keep_ratio=1.0)
    assert swapped.image_encoder.blocks[0].mlp.lin1.out_features == 70
    a, b = run(slim, images, input_boxes=BOXES), run(swapped, images, input_boxes=BOXES)
    assert (a.pred_masks - b.pred_masks).abs().max() <= 1e-5


@pytest.mark.parametrize(
    "vision",
    [
        dict(
            global_attn_indexes=[], use_rel_pos=False, qkv_bias=False, patch_size=8, window_size=4
        ),
        dict(global_attn_indexes=[0, 1, 2], num_attention_heads=4, mlp_ratio=3.0, mlp_dim=None),
    ],
    ids=["no-global-no-relpos-patch8", "all-global"],
)
def test_other_vision_configs_swap(vision, images) -> None:
    config = stock_config(**vision)
    if vision.get("patch_size") == 8:
        config.prompt_encoder_config = type(config.prompt_encoder_config)(
            **dict(PROMPT, patch_size=8)
        )
    torch.manual_seed(3)
    model = SamModel(config).eval()
    pts = POINTS[:1]
    for r in (1.0, 0.5):
        swapped = blhf.to_biglittle(model, keep_ratio=r)
        a, b = run(model, images[:1], input_points=pts), run(swapped, images[:1], input_points=pts)
        assert torch.isfinite(b.pred_masks).all()
        if r == 1.0:
            assert (a.pred_masks - b.pred_masks).abs().max() <= 1e-5


def test_fresh_e_blocks_for_distillation(stock, images) -> None:
    student = blhf.to_biglittle(stock, keep_ratio=1.0, training_free=False)
    assert hasattr(student.image_encoder.blocks[0], "little")
    a, b = run(stock, images, input_boxes=BOXES), run(student, images, input_boxes=BOXES)
    assert (a.pred_masks - b.pred_masks).abs().max() <= 1e-5  # E-blocks start as the identity


def test_import_biglittle_sam_registers_when_transformers_comes_later(tmp_path, stock) -> None:
    import subprocess
    import sys

    blhf.to_biglittle(stock).save_pretrained(tmp_path)
    code = (
        "import sys, biglittle_sam\n"
        "assert 'transformers' not in sys.modules\n"
        "from transformers import AutoModel\n"
        f"m = AutoModel.from_pretrained({str(tmp_path)!r})\n"
        "print(type(m).__name__, m.keep_ratio)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["BigLittleSamModel", "0.5"]


def test_the_speed_benchmarks_transformers_runtime_times_stock_and_swapped() -> None:
    from biglittle_sam.speed.hf_rows import transformers_rows
    from biglittle_sam.speed.rows import BenchmarkConfig

    cfg = BenchmarkConfig(sam="vit_tiny", model="bl_tiny", keep_ratios=(1.0, 0.5), peers=())
    cfg.runtime, cfg.training_free = "transformers", True
    rows = transformers_rows(cfg)
    assert [r.result.family for r in rows] == ["sam", "biglittle", "biglittle"]
    assert all(r.result.runtime == "transformers" for r in rows)
    assert rows[2].result.gmacs < rows[1].result.gmacs
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        outs = []
        for row in rows:
            row.prepare()
            outs.append(row(x))
    assert outs[0].shape == (1, 32, 16, 16)
    torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=0)  # r = 1: the stock encoder


@pytest.mark.slow
def test_vit_b_sized_swap_equals_stock_at_r_1_and_runs_training_free() -> None:
    """SAM ViT-B's shapes (random weights: nothing is downloaded), one 1024 x 1024 image."""
    from biglittle_sam.config import SAM_CONFIGS

    torch.manual_seed(0)
    stock = SamModel(blhf.hf_config_from_sam(SAM_CONFIGS["vit_b"])).eval()
    with torch.no_grad():
        for p in stock.vision_encoder.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    x = torch.randn(1, 3, 1024, 1024)
    swapped = blhf.to_biglittle(stock, keep_ratio=1.0)
    with torch.no_grad():
        ref = stock.get_image_embeddings(x)
        torch.testing.assert_close(swapped.get_image_embeddings(x), ref, atol=1e-4, rtol=0)
        half = swapped.get_image_embeddings(x, keep_ratio=0.5)
    assert half.shape == (1, 256, 64, 64) and torch.isfinite(half).all()
