"""Writing results: the JSON file, a markdown table for the README, and a PNG plot.

The plot puts one point per model and keep ratio: the quality metric (mIoU, mask AP, embedding
cosine, or mIoU against a reference model) against the encoder latency measured during the run,
or against analytic GMACs.
matplotlib is imported only here, with the Agg backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..fileio import atomic_write_json

__all__ = [
    "write_json",
    "markdown_table",
    "plot_results",
    "write_outputs",
    "PLOT_X",
]

PLOT_X = ("latency", "gmacs")
_SETTING_TITLES = {"box": "box"}


def _setting_title(name: str) -> str:
    if name.startswith("click"):
        k = int(name[5:])
        return f"{k} click" + ("s" if k > 1 else "")
    return _SETTING_TITLES.get(name, name)


def write_json(path: Path, payload: Any) -> Path:
    """Write ``payload`` as JSON atomically (temporary file in the same folder, then rename)."""
    return atomic_write_json(path, payload)


def _num(value: Optional[float], digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _cost_cells(model: Dict[str, Any]) -> List[str]:
    enc = model.get("encoder_ms") or {}
    return [
        f"{model['keep_ratio']:g}",
        "-" if model.get("gmacs") is None else f"{model['gmacs']:.4g}",
        _num(enc.get("mean"), 1),
    ]


def _dataset_line(result: Dict[str, Any]) -> str:
    ds = result["dataset"]
    parts = [f"{ds['images_evaluated']} images evaluated"]
    if "instances" in ds:
        parts.append(f"{ds['instances']} instances")
    skipped = ds.get("skipped_images") or []
    parts.append(f"{len(skipped)} images skipped")
    by_reason = ds.get("skipped_images_by_reason") or {}
    if by_reason:
        parts[-1] += " (" + ", ".join(f"{k}: {v}" for k, v in sorted(by_reason.items())) + ")"
    anns = ds.get("skipped_annotations") or {}
    if anns:
        parts.append(
            "annotations left out: " + ", ".join(f"{k}: {v}" for k, v in sorted(anns.items()))
        )
    if ds.get("boxes_clipped"):
        parts.append(f"{ds['boxes_clipped']} boxes clipped to their image")
    return "; ".join(parts)


def _source(result: Dict[str, Any]) -> str:
    ds = result["dataset"]
    where = ds.get("annotations") or ds.get("root") or ds.get("images") or ""
    return f"{ds['kind']} ({Path(where).name})" if where else ds["kind"]


def markdown_table(result: Dict[str, Any]) -> str:
    """The run as markdown: a header naming data and protocol, then the results table(s)."""
    task = result["task"]
    run = result["run"]
    device = f"{run['device']}, {run['world_size']} process" + (
        "es" if run["world_size"] > 1 else ""
    )
    if task == "miou":
        lines = _miou_lines(result, device)
    elif task == "ap":
        lines = _mask_ap_lines(result, device)
    elif task == "agreement":
        lines = _agreement_lines(result, device)
    else:
        lines = _fidelity_lines(result, device)
    return "\n".join(lines) + "\n"


def _miou_lines(result: Dict[str, Any], device: str) -> List[str]:
    """Task miou: the protocol, the mIoU table, and mIoU by object size."""
    p = result["settings"]["prompt"]
    crowd = "crowd kept" if result["dataset"].get("include_crowd", True) else "crowd dropped"
    choice = (
        "multimask, highest predicted IoU" if p["mask_choice"] == "best" else "single-mask output"
    )
    lines = [f"### mIoU on {_source(result)}, protocol `{p['protocol']}`", ""]
    lines.append(f"Masks: {choice}; {crowd}. Encoder time measured on {device}.")
    lines += [_dataset_line(result) + ".", ""]
    names = result["settings"]["setting_names"]
    header = ["model", "keep ratio", "GMACs", "encoder ms"] + [_setting_title(n) for n in names]
    lines += _table(header, [_cost_cells(m) for m in result["models"]], result["models"], names)
    lines += ["", "mIoU by object size (small / medium / large):", ""]
    header = ["model"] + [_setting_title(n) for n in names]
    rows = []
    for m in result["models"]:
        cells = [m["label"]]
        for n in names:
            s = m["miou"][n]
            cells.append(" / ".join(_num(s[b], 1) for b in ("small", "medium", "large")))
        rows.append(cells)
    return lines + _plain_table(header, rows)


_AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _mask_ap_lines(result: Dict[str, Any], device: str) -> List[str]:
    """Task ap: where the boxes came from, and COCO mask AP per model."""
    det = Path(result["settings"]["detections"]).name
    lines = [f"### Mask AP on {_source(result)} from detector boxes", ""]
    lines.append(f"Box prompts from `{det}`; COCOeval (segm). Encoder time on {device}.")
    lines += [_dataset_line(result) + ".", ""]
    header = ["model", "keep ratio", "GMACs", "encoder ms", *_AP_KEYS]
    rows = [
        [m["label"], *_cost_cells(m)] + [_num(m["mask_ap"][k], 1) for k in _AP_KEYS]
        for m in result["models"]
    ]
    return lines + _plain_table(header, rows)


def _fidelity_lines(result: Dict[str, Any], device: str) -> List[str]:
    """Task fidelity: the teacher, and embedding MSE / cosine per model."""
    lines = [f"### Embedding fidelity against `{result['teacher']['label']}`", ""]
    lines.append(
        f"MSE and cosine similarity on the valid (unpadded) embedding region; encoder time on "
        f"{device}."
    )
    lines += [_dataset_line(result) + ".", ""]
    header = ["model", "keep ratio", "GMACs", "encoder ms", "MSE", "cosine"]
    rows = [
        [
            m["label"],
            *_cost_cells(m),
            _num(m["fidelity"]["mse"], 5),
            _num(m["fidelity"]["cosine"], 4),
        ]
        for m in result["models"]
    ]
    return lines + _plain_table(header, rows)


def _percent(value: Optional[float]) -> str:
    return "-" if value is None else f"{100.0 * value:.1f}%"


def _agreement_prompt_text(settings: Dict[str, Any]) -> Tuple[str, str]:
    """Task agreement: a short name of the prompts for the title, and how masks are matched."""
    n = settings["points_per_side"]
    if settings["agreement_prompts"] == "amg":
        return f"automatic masks, {n} points per side", (
            f"Each model runs the automatic mask generator ({n} x {n} points, predicted IoU >= "
            f"{settings['pred_iou_thresh']:g}, stability >= "
            f"{settings['stability_score_thresh']:g}); each reference mask is matched with the "
            "model's mask of the highest IoU (0 when it has none)."
        )
    return f"a {n} x {n} point grid", (
        "Each grid point is one positive click; a model's mask for it is its multimask output "
        "with the highest predicted IoU, scored against the reference's mask for the same point "
        "(points where the reference's mask is empty are skipped)."
    )


def _agreement_lines(result: Dict[str, Any], device: str) -> List[str]:
    """Task agreement: the reference, mIoU against it and the share of close matches per model."""
    settings = result["settings"]
    title, how = _agreement_prompt_text(settings)
    ds = result["dataset"]
    match = f"IoU ≥ {settings['iou_match']:g}"
    reference = result["reference"]["label"]
    lines = [f"### Agreement with `{reference}` on {_source(result)}, {title}", ""]
    lines.append(
        f"{how} No labels: the reference's masks stand in for ground truth. Encoder time on "
        f"{device}."
    )
    counted = f"{ds['reference_masks']} reference masks scored, {ds['reference_empty']} empty"
    if "points" in ds:
        counted = f"{ds['points']} points, " + counted + " (skipped)"
    lines += [_dataset_line(result) + f"; {counted}.", ""]
    amg = settings["agreement_prompts"] == "amg"
    header = ["model", "keep ratio", "GMACs", "encoder ms", "mIoU", match] + (["masks"] * amg)
    rows = []
    for m in result["models"]:
        a = m["agreement"]
        cells = [m["label"], *_cost_cells(m), _num(a["miou"]["all"]), _percent(a["share"]["all"])]
        rows.append(cells + ([str(a["masks"])] if amg else []))
    lines += _plain_table(header, rows)
    lines += ["", f"mIoU and {match} by reference mask size (small / medium / large):", ""]
    rows = []
    for m in result["models"]:
        a = m["agreement"]
        bins = ("small", "medium", "large")
        rows.append(
            [
                m["label"],
                " / ".join(_num(a["miou"][b], 1) for b in bins),
                " / ".join(_percent(a["share"][b]) for b in bins),
            ]
        )
    return lines + _plain_table(["model", "mIoU", match], rows)


def _table(
    header: List[str], cost: List[List[str]], models: List[Dict[str, Any]], names: List[str]
) -> List[str]:
    rows = []
    for cells, m in zip(cost, models):
        rows.append([m["label"], *cells] + [_num(m["miou"][n]["all"]) for n in names])
    return _plain_table(header, rows)


def _plain_table(header: List[str], rows: List[List[str]]) -> List[str]:
    out = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def _series(result: Dict[str, Any]) -> Tuple[str, List[Tuple[str, List[Optional[float]]]]]:
    task = result["task"]
    models = result["models"]
    if task == "miou":
        names = result["settings"]["setting_names"]
        series = [(_setting_title(n), [m["miou"][n]["all"] for m in models]) for n in names]
        return "mIoU", series
    if task == "ap":
        return "mask AP", [("AP", [m["mask_ap"]["AP"] for m in models])]
    if task == "agreement":
        reference = result["reference"]["label"]
        return f"mIoU against {reference}", [
            ("mIoU", [m["agreement"]["miou"]["all"] for m in models])
        ]
    return "embedding cosine similarity", [("cosine", [m["fidelity"]["cosine"] for m in models])]


def plot_results(result: Dict[str, Any], path: Path, x: str = "latency") -> Path:
    """Write the quality-vs-cost PNG: one point per model and keep ratio, one series per setting.

    ``x``: ``latency`` (mean measured encoder ms) or ``gmacs`` (analytic); GMACs fall back to
    latency when a model has none.
    """
    if x not in PLOT_X:
        raise ValueError(f"plot x axis must be one of {PLOT_X}, got {x!r}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = result["models"]
    use_gmacs = x == "gmacs" and all(m.get("gmacs") is not None for m in models)
    xs = [m["gmacs"] if use_gmacs else (m.get("encoder_ms") or {}).get("mean") for m in models]
    ylabel, series = _series(result)
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    markers = "osD^vP*X"
    top: Dict[str, Tuple[float, float]] = {}  # each model is labelled once, at its highest point
    for j, (name, ys) in enumerate(series):
        pts = [
            (a, b, m["label"]) for a, b, m in zip(xs, ys, models) if a is not None and b is not None
        ]
        if not pts:
            continue
        ax.plot(
            [p[0] for p in pts],
            [p[1] for p in pts],
            marker=markers[j % len(markers)],
            ls="",
            label=name,
        )
        for px, py, label in pts:
            if label not in top or py > top[label][1]:
                top[label] = (px, py)
    for label, (px, py) in top.items():
        ax.annotate(label, (px, py), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("encoder GMACs" if use_gmacs else "encoder latency (ms, measured)")
    ax.set_ylabel(ylabel)
    title = _source(result)
    if result["task"] == "miou":
        title += f", protocol {result['settings']['prompt']['protocol']}"
    if x == "gmacs" and not use_gmacs:
        title += " (no GMACs available: latency shown)"
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_outputs(
    result: Dict[str, Any], out_dir: Path, name: str, plot_x: str = "latency"
) -> Dict[str, str]:
    """Write ``<name>.json``, ``<name>.md`` and ``<name>.png`` under ``out_dir``.

    Returns:
      ``{"json": path, "markdown": path, "plot": path}`` (``plot`` is absent when matplotlib is
      not installed; the reason is in ``plot_error``).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs: Dict[str, str] = {}
    md = out_dir / f"{name}.md"
    md.write_text(markdown_table(result), encoding="utf-8")
    outputs["markdown"] = str(md)
    try:
        outputs["plot"] = str(plot_results(result, out_dir / f"{name}.png", plot_x))
    except ImportError as e:
        outputs["plot_error"] = f"no plot: {e} (pip install 'biglittle-sam[eval]')"
    outputs["json"] = str(out_dir / f"{name}.json")
    result["outputs"] = outputs
    write_json(out_dir / f"{name}.json", result)
    return outputs
