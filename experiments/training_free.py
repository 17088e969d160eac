"""The training-free mode on the proxy benchmark's teacher: which rule, score and schedule keep
most of the teacher at each keep ratio, with no training at all.

The teacher is a plain SAM (the committed ``biglittle_sam/assets/proxy_teacher.pth`` by default, or
any vit_tiny checkpoint of the proxy geometry). Each variant is that teacher's weights in a
training-free big.LITTLE model (``training_free=True``: no LITTLE blocks, no routers), written once
as a checkpoint and scored by ``biglittle-sam-eval`` at every keep ratio, on the same prompts as
the dense teacher, on a proxy split drawn with the benchmark's seeds::

    python -m experiments.training_free --split dev --out-dir outputs/training_free  # choosing
    python -m experiments.training_free --split test --variants default random \\
        --out-dir outputs/training_free                                               # reporting

Writes ``training_free_<split>.json`` and ``.md`` (mIoU, share of the teacher, encoder MACs).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from biglittle_sam.build_sam import build_sam_from_config
from biglittle_sam.checkpoint import read_checkpoint, save_model_checkpoint
from biglittle_sam.config import biglittle_config_for, config_from_dict, get_config
from biglittle_sam.eval import EvalSettings, run_evaluation
from biglittle_sam.fileio import atomic_write_json
from biglittle_sam.flops import encoder_macs

from .proxy.data import make_proxy_split
from .proxy.settings import split_seeds

# name -> BigLittleConfig fields of the training-free mode (the rest: the config's defaults, the
# copy rule and layer 0 dense). "random" is the floor every score must beat.
VARIANTS: Dict[str, Dict[str, Any]] = {
    "window_mean": {"token_score": "window_mean"},
    "random": {"token_score": "random"},
    "edge": {"token_score": "edge"},
    "identity": {"token_score": "window_mean", "skip_rule": "identity"},
    "mlp_skip": {"token_score": "window_mean", "skip_rule": "mlp_skip"},
    "dense_global": {"token_score": "window_mean", "dense_global": True},
    "edge_dense_global": {"token_score": "edge", "dense_global": True},
    "all_layers": {"token_score": "window_mean", "dense_layers": ()},
}
TEACHER = "biglittle_sam/assets/proxy_teacher.pth"
_FIXED = ("variant", "keep_ratio", "gmacs", "bl_b gmacs")
# SAM ViT-B's encoder as segment_anything builds it (flops.encoder_macs of vit_b)
SAM_B_GMACS = encoder_macs(get_config("vit_b"))["total"] / 1e9


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.training_free",
        description="The training-free mode on the proxy teacher: rules, scores, schedules.",
    )
    parser.add_argument("--teacher", default=TEACHER, help="a vit_tiny proxy teacher checkpoint")
    parser.add_argument("--split", choices=("dev", "test"), default="dev")
    parser.add_argument("--seed", type=int, default=0, help="the proxy run seed (split seeds)")
    parser.add_argument("--images", type=int, default=200, help="images of the split")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.75, 0.5, 0.25])
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--prompts", nargs="+", choices=("box", "click"), default=["box", "click"])
    parser.add_argument("--clicks", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--out-dir", default="outputs/training_free")
    parser.add_argument("--threads", type=int, default=None)
    return parser


def sam_b_gmacs(variant: str, ratio: float) -> float:
    """Encoder GMACs of ``bl_b`` (SAM ViT-B's size) in this variant at ``ratio``."""
    config = get_config("bl_b")
    fields = dict(VARIANTS[variant], training_free=True, keep_ratio=ratio)
    return encoder_macs(dataclasses.replace(config, **fields))["total"] / 1e9


def write_variants(teacher: Path, names: Sequence[str], folder: Path) -> Dict[str, Path]:
    """One training-free checkpoint per variant, holding the teacher's weights unchanged."""
    payload = read_checkpoint(teacher)
    sam_config = config_from_dict(payload["config"])
    out: Dict[str, Path] = {}
    for name in names:
        config = biglittle_config_for(sam_config, "bl_tiny", training_free=True, **VARIANTS[name])
        model = build_sam_from_config(config)
        model.load_state_dict(payload["model"], strict=True)  # SAM's keys, nothing else
        out[name] = save_model_checkpoint(folder / f"{name}.pth", model, config)
    return out


def summarize(result: Dict[str, Any], labels: List[Tuple[str, float]]) -> List[Dict[str, Any]]:
    """One row per model (in ``labels``' order, the dense teacher first): mIoU x 100 per prompt
    setting, 1-click mIoU of small and medium objects, and each score's share of the teacher's."""
    rows: List[Dict[str, Any]] = []
    for model, (variant, ratio) in zip(result["models"], labels):
        miou = model["miou"]
        row: Dict[str, Any] = {"variant": variant, "keep_ratio": ratio, "gmacs": model["gmacs"]}
        row["bl_b gmacs"] = sam_b_gmacs(variant, ratio) if variant in VARIANTS else SAM_B_GMACS
        row.update({key: value["all"] for key, value in miou.items()})
        if "click1" in miou:
            row.update({f"click1 {b}": miou["click1"][b] for b in ("small", "medium")})
        rows.append(row)
    base = rows[0]
    for row in rows:
        for key in [k for k in row if k not in _FIXED]:
            if base.get(key):
                row[f"{key} kept"] = row[key] / base[key] if row[key] is not None else None
    return rows


def _cell(key: str, value: Optional[float]) -> str:
    if value is None:
        return "-"
    return f"{value:.1%}" if key.endswith("kept") else f"{value:.1f}"


def markdown(rows: List[Dict[str, Any]], split: str, teacher: str) -> str:
    keys = [k for k in rows[0] if k not in _FIXED]
    lines = [
        f"Training-free mode on the proxy teacher ({teacher}), {split} split; mIoU x 100 and "
        "its share of the dense teacher's.",
        "",
        "| variant | keep ratio | GMACs | ViT-B GMACs | " + " | ".join(keys) + " |",
        "|---|---:|---:|---:|" + "---:|" * len(keys),
    ]
    for row in rows:
        cells = [_cell(k, row.get(k)) for k in keys]
        lines.append(
            f"| {row['variant']} | {row['keep_ratio']:g} | {row['gmacs']:.4f} | "
            f"{row['bl_b gmacs']:.1f} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = build_parser().parse_args(argv)
    out = Path(args.out_dir)
    seed = split_seeds(args.seed)[args.split]
    split = make_proxy_split(out / args.split, 128, args.images, seed)
    variants = write_variants(Path(args.teacher), args.variants, out / "models")
    labels: List[Tuple[str, float]] = [("teacher (dense)", 1.0)]
    models = [f"vit_tiny={args.teacher}"]
    for name, path in variants.items():
        for ratio in args.ratios:
            models.append(f"bl_tiny={path}@{ratio:g}")
            labels.append((name, ratio))
    settings = EvalSettings(
        models=tuple(models),
        annotations=str(split.coco_annotations),
        images=str(split.coco_images),
        prompts=tuple(args.prompts),
        clicks=tuple(args.clicks),
        out_dir=str(out / "eval"),
        name=f"eval_{args.split}",
        progress=False,
        device="cpu",
        threads=args.threads,
    )
    result = run_evaluation(settings.resolved())
    rows = summarize(result, labels)
    report = {"split": args.split, "seed": seed, "teacher": args.teacher, "rows": rows}
    atomic_write_json(out / f"training_free_{args.split}.json", report)
    text = markdown(rows, args.split, args.teacher)
    (out / f"training_free_{args.split}.md").write_text(text)
    print(text)
    return report


if __name__ == "__main__":
    main()
