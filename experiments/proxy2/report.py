"""The second proxy benchmark's report: targets, the frontier table and its plot.

The markdown and the plot are written from the **test** split only; a dev-split run (choosing
recipes) writes its json alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from biglittle_sam.fileio import atomic_open

from ..proxy.report import (
    find_row,
    format_number,
    paired_se,
    stage_times,
    target_lines,
    teacher_targets,
    trained_in_lines,
)

__all__ = ["RETENTION", "TEACHER_TARGETS", "check_targets", "markdown", "plot", "write_report"]

TEACHER_TARGETS = (("box", 80.0), ("click1", 70.0))
RETENTION = {0.5: 0.97, 0.25: 0.95, 0.1: 0.90}  # 1-click share of the teacher's, per ratio
BIG_LITTLE = "big.LITTLE"
# The student that starts from the training-free model (little_correction; --copy-student).
FROM_TRAINING_FREE = "big.LITTLE from training-free"
STUDENTS = (BIG_LITTLE, FROM_TRAINING_FREE)


def check_targets(rows: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The issue's targets, each with what was measured and whether it is met."""
    teacher = find_row(rows, "teacher", None)
    out = teacher_targets(teacher, TEACHER_TARGETS)
    for row in (r for r in rows if r["variant"] in STUDENTS):
        goal = RETENTION.get(row["keep_ratio"])
        kept = row["click1"] / teacher["click1"]
        name = f"{row['variant']} r = {row['keep_ratio']:g}"
        if goal is not None:
            out.append(
                {
                    "target": f"{name} keeps >= {goal:.0%} of 1 click",
                    "measured": f"{kept:.1%}",
                    "met": kept >= goal,
                }
            )
        for dense in (r for r in rows if r["keep_ratio"] == row["keep_ratio"]):
            if dense["variant"] in STUDENTS + ("teacher", "training-free"):
                continue
            gap = row["click1"] - dense["click1"]
            se = paired_se(row.get("click1_ious"), dense.get("click1_ious"))
            out.append(
                {
                    "target": f"{name} above {dense['model']}",
                    "measured": f"{gap:+.1f} +- {format_number(se)} (1 click)",
                    "met": gap > 0,
                }
            )
    return out


def _bins(values: Dict[str, Optional[float]]) -> str:
    return " / ".join(format_number(v) for v in values.values())


def markdown(result: Dict[str, Any]) -> str:
    """The frontier table, targets, bins, capacity share and how the run was made."""
    if result["split"] != "test":
        raise ValueError(f"the table is written from the test split, not {result['split']!r}")
    rows = result["rows"]
    teacher = find_row(rows, "teacher", None)
    lines = [
        f"Split: **test** ({result['data']['test']['images']} images, "
        f"{result['data']['test']['instances']} objects). Command: `{result['command']}`. "
        f"Hardware: {result['hardware']}.",
        "",
        "| model | encoder GMACs | CPU ms | box | 1 click | 3 clicks | 1 click kept "
        "| 1 click small / medium / large |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        kept = 100 * r["click1"] / teacher["click1"]
        lines.append(
            f"| {r['model']} | {r['gmacs']:.3f} | {r['latency_ms']:.1f} | {r['box']:.1f} "
            f"| {r['click1']:.1f} | {r['click3']:.1f} | {kept:.1f}% | {_bins(r['click1_bins'])} |"
        )
    counts = result["bin_counts"]
    lines += [
        "",
        f"Objects per token bin (small / medium / large): {counts['small']} / "
        f"{counts['medium']} / {counts['large']}; objects cover "
        f"{result['data']['test']['object_share']:.0%} of an image on average.",
        "",
        "## Targets",
        *target_lines(result["targets"]),
        "",
        f"## Where the router spends the big block (r = {result['capacity_ratio']:g})",
        "",
        "| routing | capacity on objects | objects' share of tokens | ratio |",
        "|---|---:|---:|---:|",
    ]
    for name, c in result["capacity_share"].items():
        lines.append(
            f"| {name} | {c['capacity_on_objects']:.1%} | {c['object_share']:.1%} "
            f"| {c['enrichment']:.2f} |"
        )
    lines += ["", f"Stage times: {stage_times(result['stage_s'])}; "]
    lines[-1] += f"wall {result['wall_s'] / 60:.1f} min."
    lines += trained_in_lines(result)
    return "\n".join(lines) + "\n"


def plot(result: Dict[str, Any], path: Path) -> Path:
    """1-click and box mIoU against encoder GMACs and against CPU latency, one series per model
    family (the teacher a star)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8), sharey="row")
    families: Dict[str, List[Dict[str, Any]]] = {}
    for r in result["rows"]:
        families.setdefault(r["variant"], []).append(r)
    for i, metric in enumerate(("click1", "box")):
        for j, (x, xlabel) in enumerate((("gmacs", "encoder GMACs"), ("latency_ms", "CPU ms"))):
            ax = axes[i][j]
            for name, members in families.items():
                members = sorted(members, key=lambda r: r[x])
                style = "*" if name == "teacher" else "o-"
                ax.plot([r[x] for r in members], [r[metric] for r in members], style, label=name)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f"{'1-click' if metric == 'click1' else 'box'} mIoU (test)")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("proxy benchmark v2: mIoU against encoder cost")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(result: Dict[str, Any], out: Path) -> Dict[str, Optional[str]]:
    """Targets into ``result``; on the test split, ``proxy_v2.md`` and ``proxy_v2.png``."""
    result["targets"] = check_targets(result["rows"])
    written: Dict[str, Optional[str]] = {
        "json": str(out / "proxy_v2.json"),
        "markdown": None,
        "plot": None,
    }
    if result["split"] == "test":
        md = out / "proxy_v2.md"
        with atomic_open(md, "w", encoding="utf-8") as f:
            f.write(markdown(result))
        written["markdown"] = str(md)
        written["plot"] = str(plot(result, out / "proxy_v2.png"))
    return written
