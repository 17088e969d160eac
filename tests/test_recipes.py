"""Recipes as files: --config for distill and finetune, flags over the file, settings.json."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import List

import pytest

from biglittle_sam.distill.distill import DistillSettings
from biglittle_sam.train.finetune import FinetuneSettings, run_finetune
from biglittle_sam.train.recipes import RecipeError, load_recipe, merge_settings
from experiments.proxy.recipes import MAKE_OUT_DIR, stage_recipes
from experiments.proxy.settings import ProxyBenchmarkSettings
from tools import distill, finetune

from .train_fixtures import fast_train, make_shapes

ROOT = Path(__file__).resolve().parents[1]

RECIPE_YAML = """\
student: bl_tiny
cache: c
images: i
keep_ratios: [0.25, 0.5]
student_overrides: {little_dim: 16, global_attn_indexes: [1, 3]}
phase: 2
train:
  steps: 50
  lr: 2.0e-3
  betas: [0.8, 0.9]
  out_dir: runs/a
"""

RECIPE_TOML = """\
student = "bl_tiny"
cache = "c"
images = "i"
keep_ratios = [0.25, 0.5]
student_overrides = {little_dim = 16, global_attn_indexes = [1, 3]}
phase = 2

[train]
steps = 50
lr = 2.0e-3
betas = [0.8, 0.9]
out_dir = "runs/a"
"""

FLAGS_ALONE = [
    "--student", "bl_tiny", "--cache", "c", "--images", "i", "--keep-ratios", "0.25", "0.5",
    "--override", "little_dim=16", "--override", "global_attn_indexes=[1,3]", "--phase", "2",
    "--steps", "50", "--lr", "2e-3", "--betas", "0.8", "0.9", "--out-dir", "runs/a",
]  # fmt: skip
OVERRIDE = ["--steps", "70", "--mask-weight", "3"]


def _distill(argv: List[str]) -> DistillSettings:
    return distill.settings_from_args(distill.build_parser().parse_args(argv))


@pytest.mark.parametrize("suffix,text", [(".yaml", RECIPE_YAML), (".toml", RECIPE_TOML)])
def test_recipe_plus_flag_equals_flags_alone(tmp_path: Path, suffix: str, text: str) -> None:
    recipe = tmp_path / f"recipe{suffix}"
    recipe.write_text(text)
    from_file = _distill(["--config", str(recipe)] + OVERRIDE)
    from_flags = _distill(FLAGS_ALONE + OVERRIDE)
    assert from_file == from_flags
    assert from_file.train.steps == 70 and from_file.mask_weight == 3.0  # the flags won
    assert from_file.student_overrides == (("little_dim", 16), ("global_attn_indexes", (1, 3)))
    # train fields the file leaves out keep distillation's defaults, not TrainSettings()'s
    assert from_file.train.weight_decay == DistillSettings(cache="c", images="i").train.weight_decay


def test_finetune_recipe_plus_flag(tmp_path: Path) -> None:
    recipe = tmp_path / "ft.yaml"
    recipe.write_text("images: i\nmodel: vit_tiny\nhflip: false\ntrain: {batch_size: 2}\n")
    args = finetune.build_parser().parse_args(["--config", str(recipe), "--model", "bl_tiny"])
    flags = ["--images", "i", "--model", "bl_tiny", "--no-hflip", "--batch-size", "2"]
    expected = finetune.settings_from_args(finetune.build_parser().parse_args(flags))
    assert finetune.settings_from_args(args) == expected


def test_a_run_writes_its_settings_when_it_starts_and_they_read_back(
    tmp_path: Path, teacher_ckpt: Path, one_thread
) -> None:
    """The training loop writes ``settings.json`` as the run starts (here it stops after one of two
    steps), and the file is a recipe that gives the same settings back."""
    data = make_shapes(tmp_path / "shapes", num_images=2)
    out = tmp_path / "ft"
    settings = FinetuneSettings(
        images=str(data.coco_images),
        annotations=str(data.coco_annotations),
        model="vit_tiny",
        checkpoint=str(teacher_ckpt),
        train=fast_train(out, steps=2, stop_after=1),
    )
    result = run_finetune(settings)
    assert not result.finished and (out / "settings.json").is_file()
    recipe = load_recipe(out / "settings.json", FinetuneSettings)
    assert merge_settings(FinetuneSettings, recipe, {}, lambda train: train) == settings


@pytest.mark.parametrize(
    "text,message",
    [
        ("train:\n  stepz: 5\n", "unknown key 'train.stepz'; TrainSettings has: "),
        ("studnet: bl_b\n", "unknown key 'studnet'; DistillSettings has: "),
        ("train:\n  steps: many\n", "'train.steps' must be int, got 'many' (str)"),
        ("train:\n  steps: 1.5\n", "'train.steps' must be int, got 1.5 (float)"),
        ("keep_ratios: half\n", "'keep_ratios' must be Tuple[float, ...], got 'half' (str)"),
        ("refine_click: 'yes'\n", "'refine_click' must be bool, got 'yes' (str)"),
        ("limit: null\ntrain: 3\n", "'train' must be a mapping of TrainSettings fields"),
        ("- a\n- b\n", "expected a mapping of settings fields at the top level, got list"),
        ("a: [\n", "not valid YAML"),
    ],
)
def test_bad_recipes_name_the_key_and_type(tmp_path: Path, text: str, message: str) -> None:
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(text)
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe, DistillSettings)
    assert message in str(info.value) and str(recipe) in str(info.value)


def test_bad_recipe_on_the_command_line_exits_2(tmp_path: Path, capsys) -> None:
    recipe = tmp_path / "bad.toml"
    recipe.write_text('cache = "c"\nimages = "i"\n[train]\nlr = "fast"\n')
    with pytest.raises(SystemExit) as info:
        distill.main(["--config", str(recipe)])
    assert info.value.code == 2
    assert "'train.lr' must be float, got 'fast' (str)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        distill.main(["--images", "i"])
    assert info.value.code == 2
    assert "--cache is required (or 'cache' in the --config file)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        finetune.main(["--config", str(tmp_path / "missing.ini")])
    assert info.value.code == 2 and "expected a .yaml, .yml, .toml, .json file" in (
        capsys.readouterr().err
    )


def test_shipped_sa1b_recipe_loads() -> None:
    sa1b = load_recipe(ROOT / "configs/bl_b_sa1b.yaml", DistillSettings)
    assert sa1b["student"] == "bl_b"
    assert DistillSettings(**{k: v for k, v in sa1b.items() if k != "train"}).phase == 1


def test_shipped_proxy_recipes_are_the_pipelines_stages() -> None:
    """experiments/proxy/configs/*.yaml, read as recipes, give exactly the settings the proxy
    pipeline builds for ``make proxy-benchmark`` (regenerate them with the command in their
    header)."""
    settings = dataclasses.replace(ProxyBenchmarkSettings(), out_dir=MAKE_OUT_DIR)
    for name, built in stage_recipes(settings).items():
        cls = FinetuneSettings if name == "teacher" else DistillSettings
        recipe = load_recipe(ROOT / "experiments" / "proxy" / "configs" / f"{name}.yaml", cls)
        assert merge_settings(cls, recipe, {}, lambda train: train) == built, name
