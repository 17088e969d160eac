"""The speed benchmark's report: speedups against SAM, the JSON, the markdown table and the plot.

Speedups and FLOPs-to-latency efficiency (speedup / GMACs ratio) are taken against the SAM encoder
measured in the same run, and against SAM's weights on the fused dense path (routing alone).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from ..fileio import atomic_write_json
from ..runtime.hardware import hardware_description
from .rows import CORE_FAMILIES, BenchmarkConfig, ModelResult, Row, onnx_spins

__all__ = ["build_report", "save_json", "save_plot", "to_markdown"]


def build_report(entries: Sequence[Row], cfg: BenchmarkConfig) -> Dict[str, Any]:
    """The measured rows with their speedups filled in, and the run's ``meta`` (JSON-ready)."""
    baseline = next((e.result for e in entries if e.result.family == "sam"), None)
    fast = next((e.result for e in entries if e.result.family == "fast_sam"), None)
    for e in entries:
        r = e.result
        if baseline is not None:
            r.speedup, r.flops_ratio, r.efficiency = _relative(r, baseline)
        if fast is not None and r.family in ("biglittle", "biglittle_pooled"):
            r.speedup_vs_fast, _, r.efficiency_vs_fast = _relative(r, fast)
    return {
        "meta": {
            "hardware": hardware_description(cfg.device),
            "device": cfg.device,
            "dtype": cfg.dtype,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()},
            "date": time.strftime("%Y-%m-%d"),
        },
        "results": [asdict(e.result) for e in entries],
    }


def _relative(
    r: ModelResult, base: ModelResult
) -> Tuple[Optional[float], Optional[float], Optional[float]]:
    """(speedup, GMACs ratio, efficiency = speedup / GMACs ratio) of ``r`` against ``base``."""
    if r.latency_s is None or base.latency_s is None:
        return None, None, None
    speedup = base.latency_s / r.latency_s
    if not (r.gmacs and base.gmacs):
        return speedup, None, None
    ratio = base.gmacs / r.gmacs
    return speedup, ratio, speedup / ratio


def _fmt(value: Optional[float], spec: str = "", suffix: str = "") -> str:
    """``spec`` as given, or by default 3 significant digits for small values and 1 decimal else."""
    if value is None:
        return "-"
    if not spec:
        spec = ".1f" if abs(value) >= 10 else ".3g"
    return f"{value:{spec}}{suffix}"


def to_markdown(report: Dict[str, Any]) -> str:
    """The README table for a :func:`~.measure.run_benchmark` report."""
    config = report["meta"]["config"]
    sizes = config["batch_sizes"]
    compiled = bool(config.get("compile"))
    runtimes = bool(config.get("runtimes"))
    head = ["model"] + (["runtime"] if runtimes else []) + ["input", "params (M)", "GMACs"]
    head += ["latency (s)"]
    head += [f"img/s @{b}" for b in sizes]
    head += ["peak mem (MB)", "speedup", "GMACs ratio", "efficiency"]
    head += ["speedup vs fused SAM", "efficiency vs fused SAM"]
    if runtimes:
        head += ["speedup vs SAM in PyTorch"]
    if compiled:
        head += [f"compile (s) @{sizes[0]}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report["results"]:
        ips = r["images_per_s"]
        row = [r["name"]] + ([r["runtime"]] if runtimes else [])
        row += [
            str(r["input_size"]),
            f"{r['params_m']:.1f}",
            _fmt(r["gmacs"]),
            _fmt(r["latency_s"]),
        ]
        row += [_fmt(ips.get(b, ips.get(str(b)))) for b in sizes]
        row += [
            _fmt(r["peak_memory_mb"], ".0f"),
            _fmt(r["speedup"], ".2f", "x"),
            _fmt(r["flops_ratio"], ".2f", "x"),
            _fmt(r["efficiency"], ".2f"),
            _fmt(r.get("speedup_vs_fast"), ".2f", "x"),
            _fmt(r.get("efficiency_vs_fast"), ".2f"),
        ]
        if runtimes:
            row.append(_fmt(r.get("speedup_vs_sam_pytorch"), ".2f", "x"))
        if compiled:
            cs = r.get("compile_s") or {}
            row.append(_fmt(cs.get(sizes[0], cs.get(str(sizes[0])))))
        lines.append("| " + " | ".join(row) + " |")
    meta = report["meta"]
    lines.append("")
    lines.append(
        f"{meta['hardware']}; torch {meta['torch']}, {meta['dtype']}, median of "
        f"{meta['config']['repeats']} interleaved rounds at batch {sizes[0]}. Speedup and "
        "efficiency (speedup / GMACs ratio) are against upstream SAM's encoder in the same run; "
        "the last two columns are against SAM's weights on our fused dense path (routing alone). "
        "Peers: timm backbones "
        "only, random weights."
    )
    notes = _notes(report)
    if notes:
        lines[-1] += " " + " ".join(notes)
    return "\n".join(lines)


def _notes(report: Dict[str, Any]) -> List[str]:
    """Sentences for the table's note on the optional rows and settings of this report."""
    config = report["meta"]["config"]
    families = {r["family"] for r in report["results"]}
    sizes = config["batch_sizes"]
    notes = []
    cap = config.get("max_batch_others")
    others = families - set(CORE_FAMILIES)
    if cap is not None and others and any(b > cap for b in sizes):
        notes.append(
            f'Peers, pooled-k/v and onnxruntime rows are measured up to batch {cap} only ("-" '
            "above); SAM, fused SAM and big.LITTLE at every batch size."
        )
    if len(sizes) > 1:
        notes.append(
            f"Throughput at batch > {sizes[0]}: median of {config['batch_repeats']} rounds."
        )
    if "biglittle_pooled" in families:
        notes.append(
            '"pooled k/v": semi-cross attention averages the unrouted tokens\' keys and values '
            "2x2 (GMACs count it)."
        )
    if "onnx" in families:
        notes.append(
            f'"(onnxruntime)": the same encoder exported to ONNX (opset '
            f"{config.get('onnx_opset')}) on onnxruntime's CPU provider, fp32; speedup against "
            "upstream SAM in PyTorch."
        )
    if config.get("runtimes"):
        notes.append(
            "Each runtime ran in a process of its own. Speedup, GMACs ratio and efficiency are "
            "against SAM in the same runtime (onnxruntime against onnxruntime, int8 against "
            "int8); the last column is against upstream SAM in PyTorch eager fp32. pytorch-int8: "
            "dynamic int8 Linear layers (biglittle_sam.quantize); onnxruntime-int8: "
            "quantize_onnx (onnxruntime quantize_dynamic)."
        )
    spins = {
        onnx_spins(config.get("onnx_spinning"), own_process=r["family"] != "onnx")
        for r in report["results"]
        if str(r.get("runtime", "")).startswith("onnxruntime")
    }
    if spins:
        how = "spin" if spins == {True} else "sleep" if spins == {False} else "vary"
        notes.append(f"onnxruntime's threads {how} between operators (--onnx-spinning).")
    failed = report["meta"].get("failed_runtimes") or {}
    if failed:
        notes.append(f"Not timed, their process failed: {', '.join(failed)}.")
    if config.get("compile"):
        notes.append(
            f"PyTorch rows run through torch.compile (backend {config.get('compile_backend')}); "
            "compile time is the first call, excluded from the latency."
        )
    return notes


def save_plot(report: Dict[str, Any], path: str) -> Path:
    """PNG: median latency against GMACs, one point per model and keep ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = {
        "sam": "tab:red",
        "fast_sam": "tab:orange",
        "biglittle": "tab:blue",
        "biglittle_pooled": "tab:cyan",
        "onnx": "tab:green",
        "peer": "tab:gray",
    }
    families = (
        ("sam", "SAM"),
        ("fast_sam", "SAM, fused attention"),
        ("biglittle", "big.LITTLE"),
        ("biglittle_pooled", "big.LITTLE, pooled k/v"),
        ("onnx", "onnxruntime"),
        ("peer", "peer backbones"),
    )
    for fam, label in families:
        rows = [r for r in report["results"] if r["family"] == fam and r["gmacs"] is not None]
        if not rows:
            continue
        ax.plot(
            [r["gmacs"] for r in rows],
            [r["latency_s"] for r in rows],
            "o-" if fam.startswith("biglittle") else "o",
            color=colors[fam],
            label=label,
        )
        for r in rows:
            ax.annotate(r["name"].split(" (")[0], (r["gmacs"], r["latency_s"]), fontsize=7)
    ax.set_xlabel("GMACs per image")
    ax.set_ylabel("median latency per image (s)")
    ax.set_title(report["meta"]["hardware"], fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def save_json(report: Dict[str, Any], path: str) -> Path:
    """Write the report as JSON (atomically: temp file, then rename)."""
    return atomic_write_json(path, report, indent=2)
