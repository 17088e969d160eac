"""The second proxy benchmark's models on further shapes sets drawn with other seeds.

A finished run's table comes from one test split. This scores the same trained models (the specs
its ``proxy_v2.json`` records) on token-sized sets drawn with seeds the run never used, and reports
each row's 1-click mIoU and the share of the teacher's it keeps on every set:

    python -m experiments.proxy2.seeds outputs/proxy_v2 --seeds 101 102 103

Each set is written once under ``<run>/seeds/seed_<N>`` and each set's evaluation is kept in
``<run>/seeds/seed_<N>.json``, so an interrupted call continues where it stopped; the summary is
``<run>/seeds/seeds.json`` and ``seeds.md``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from biglittle_sam.data.shapes import make_shapes_dataset, token_sized_shapes_config
from biglittle_sam.eval.runner import EvalSettings
from biglittle_sam.fileio import atomic_open
from biglittle_sam.train.launch import launch

from .. import stages
from .report import BIG_LITTLE, FROM_TRAINING_FREE

__all__ = ["DEFAULT_VARIANTS", "main", "score_seeds"]

DEFAULT_VARIANTS = ("teacher", BIG_LITTLE, FROM_TRAINING_FREE, "training-free")


def _read_run(run: Path) -> Dict[str, Any]:
    path = run / "proxy_v2.json"
    if not path.is_file():
        raise ValueError(f"{path} not found: name a finished proxy v2 run's output folder")
    result = json.loads(path.read_text(encoding="utf-8"))
    if not any(r["variant"] == "teacher" for r in result.get("rows", [])):
        raise ValueError(f"{path} has no teacher row: not a finished proxy v2 run")
    return result


def _score_set(
    run: Path, rows: List[Dict[str, Any]], geometry: Dict[str, Any], seed: int, images: int,
    device: str, processes: int, stamp: str,
) -> Dict[str, Dict[str, float]]:  # fmt: skip
    """Every row's box / 1-click / 3-click mIoU on the set of ``seed`` (kept in a json, reused
    while the run's ``created`` stamp, the specs and the image count are the same)."""
    kept = run / "seeds" / f"seed_{seed}.json"
    specs = {r["model"]: r["spec"] for r in rows}
    if kept.is_file():  # reused only for the same images and the same trained models
        saved = json.loads(kept.read_text(encoding="utf-8"))
        if (saved.get("images"), saved.get("specs"), saved.get("run")) == (images, specs, stamp):
            return saved["rows"]
    config = token_sized_shapes_config(geometry["img_size"], geometry["patch_size"], images, seed)
    data = make_shapes_dataset(run / "seeds" / f"seed_{seed}", config, True)
    settings = EvalSettings(
        models=tuple(r["spec"] for r in rows),
        images=str(data.coco_images),
        annotations=str(data.coco_annotations),
        clicks=(1, 3),
        name=f"miou_proxy_v2_seed_{seed}",
        seed=0,
        device=device,
        out_dir=str(run / "seeds" / f"eval_{seed}"),
        progress=False,
    )
    evaluation = launch(stages.seeded_evaluation, settings, processes, 1)
    scores = {
        row["model"]: {k: model["miou"][k]["all"] for k in ("box", "click1", "click3")}
        for row, model in zip(rows, evaluation["models"])
    }
    with atomic_open(kept, "w") as f:
        json.dump({"seed": seed, "images": images, "specs": specs, "run": stamp, "rows": scores}, f)
    return scores


def score_seeds(
    run: Path,
    seeds: Sequence[int],
    images: int = 200,
    variants: Sequence[str] = DEFAULT_VARIANTS,
    device: str = "cpu",
    processes: int = 2,
) -> Dict[str, Any]:
    """The run's rows of ``variants`` on a set per seed: mIoU and the 1-click share kept.

    Raises:
      ValueError: no finished run in ``run``, no seed, or a seed the run's own splits used.
    """
    result = _read_run(run)
    if not seeds:
        raise ValueError("seeds: name at least one seed")
    used = sorted(set(seeds) & set(result["data"]["seeds"].values()))
    if used:
        raise ValueError(f"seeds {used} drew the run's own splits; choose others")
    rows = [r for r in result["rows"] if r["variant"] in set(variants) | {"teacher"}]
    per_seed = {
        seed: _score_set(
            run, rows, result["geometry"], seed, images, device, processes, result["created"]
        )
        for seed in seeds
    }
    table = []
    for row in rows:
        scores = [per_seed[seed][row["model"]] for seed in seeds]
        kept = [s["click1"] / per_seed[seed]["teacher"]["click1"] for s, seed in zip(scores, seeds)]
        table.append({"model": row["model"], "scores": scores, "click1_kept": kept})
    summary = {"run": str(run), "images": images, "seeds": list(seeds), "rows": table}
    with atomic_open(run / "seeds" / "seeds.json", "w") as f:
        json.dump(summary, f, indent=1)
    with atomic_open(run / "seeds" / "seeds.md", "w") as f:
        f.write(markdown(summary))
    return summary


def markdown(summary: Dict[str, Any]) -> str:
    """One row per model: box / 1 click and the 1-click share kept on each seed's set."""
    seeds = summary["seeds"]
    head = " | ".join(f"seed {s}: box / 1 click (kept)" for s in seeds)
    lines = [
        f"{summary['images']} images a set; `python -m experiments.proxy2.seeds {summary['run']} "
        f"--seeds {' '.join(str(s) for s in seeds)}`",
        "",
        f"| model | {head} |",
        "|---|" + "---|" * len(seeds),
    ]
    for row in summary["rows"]:
        cells = [
            f"{s['box']:.1f} / {s['click1']:.1f} ({k:.1%})"
            for s, k in zip(row["scores"], row["click1_kept"])
        ]
        lines.append(f"| {row['model']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Score a finished run's models on sets drawn with ``--seeds`` and print the table."""
    parser = argparse.ArgumentParser(
        prog="python -m experiments.proxy2.seeds",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("run", type=Path, help="a finished proxy v2 run's output folder")
    parser.add_argument("--seeds", type=int, nargs="+", required=True, help="one set per seed")
    parser.add_argument("--images", type=int, default=200, help="images per set")
    parser.add_argument(
        "--variants", nargs="+", default=list(DEFAULT_VARIANTS), help="the rows to score"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--processes", type=int, default=2, help="evaluation processes")
    args = parser.parse_args(argv)
    if args.images < 1 or args.processes < 1:
        parser.error(f"--images and --processes must be >= 1, got {args.images}, {args.processes}")
    try:
        summary = score_seeds(
            args.run, args.seeds, args.images, args.variants, args.device, args.processes
        )
    except ValueError as error:
        parser.error(str(error))
    print(markdown(summary), end="")
    return summary


if __name__ == "__main__":
    main()
