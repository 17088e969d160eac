"""Measured encoder speed: SAM ViT against big.LITTLE at several keep ratios, peers for context.

All models are timed in one process, interleaved round by round (SAM, then each big.LITTLE ratio,
then the peers, then again), so that a slow moment of a noisy machine hits every model alike; the
reported latency is the median of the rounds. Speedups and FLOPs-to-latency efficiency are taken
against the SAM encoder measured in the same run.

Weights are random (nothing is downloaded): speed does not depend on the weights' values, except
through routing, whose capacity is static.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import os
import platform
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .build_sam import build_sam_from_config, sam_model_registry, set_keep_ratio
from .config import BigLittleConfig, get_config
from .fileio import atomic_write_json
from .flops import encoder_gmacs
from .modeling import ImageEncoderViTFused

__all__ = [
    "BenchmarkConfig",
    "ModelResult",
    "PEERS",
    "run_benchmark",
    "to_markdown",
    "save_plot",
    "hardware_description",
    "save_json",
]

log = logging.getLogger(__name__)

# timm backbones of the peers, at the input size their SAM variant feeds them. Backbone only: the
# peers' SAM necks (and MobileSAM's / EdgeSAM's stride changes) are not included, so these are
# lower bounds.
PEERS: Dict[str, Dict[str, Any]] = {
    "repvit_m1": {"paper": "EdgeSAM (RepViT-M1)", "size": 1024},
    "tiny_vit_5m_224": {"paper": "MobileSAM (TinyViT-5M)", "size": 1024},
    "efficientvit_l1": {"paper": "EfficientViT-SAM-L1", "size": 512},
    "sam2_hiera_tiny": {"paper": "SAM 2 (Hiera-T)", "size": 1024},
}


@dataclass
class BenchmarkConfig:
    """What to measure. Defaults: SAM ViT-B against bl_b at 1.0, 0.5, 0.25 and 0.1, with peers."""

    sam: str = "vit_b"  # baseline SAM encoder (registry name)
    fast_sam: bool = True  # also time SAM's weights on our fused dense path, to split the speedup
    model: str = "bl_b"  # big.LITTLE config (registry name)
    keep_ratios: Sequence[float] = (1.0, 0.5, 0.25, 0.1)
    peers: Sequence[str] = tuple(PEERS)  # timm backbones; empty to skip
    device: str = "cpu"
    dtype: str = "fp32"  # "fp32" or "bf16" (autocast; LayerNorm stays fp32)
    batch_sizes: Sequence[int] = (1, 4)  # latency at the first; images/s at every one
    warmup: int = 1  # untimed passes per model and batch size
    repeats: int = 5  # timed rounds at the first batch size (median reported)
    batch_repeats: int = 2  # timed rounds at the other batch sizes
    img_size: Optional[int] = None  # default: the config's (1024)
    threads: Optional[int] = None  # torch threads; default: torch's choice (all cores)
    memory: bool = True  # measure peak memory of one pass
    seed: int = 0


@dataclass
class ModelResult:
    """One row of the benchmark."""

    name: str
    family: str  # "sam", "fast_sam", "biglittle" or "peer"
    keep_ratio: Optional[float]
    input_size: int
    params_m: float
    gmacs: Optional[float]
    gmacs_source: str
    latency_s: Optional[float] = None  # median at batch 1 (the first batch size)
    latency_runs_s: List[float] = field(default_factory=list)
    images_per_s: Dict[int, float] = field(default_factory=dict)
    peak_memory_mb: Optional[float] = None
    speedup: Optional[float] = None  # baseline latency / this latency
    flops_ratio: Optional[float] = None  # baseline GMACs / this GMACs
    efficiency: Optional[float] = None  # speedup / flops_ratio
    speedup_vs_fast: Optional[float] = None  # against SAM on the fused path: routing alone
    efficiency_vs_fast: Optional[float] = None  # speedup_vs_fast / its GMACs ratio
    note: str = ""


class _PeakRSS:
    """Peak resident memory growth of this process while the context is open (CPU), in bytes.

    glibc keeps freed memory for reuse, which would hide a pass's allocations from the resident set
    size, so the heap is trimmed (``malloc_trim``) before the baseline is read.
    """

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss() - self.base)
            time.sleep(self.interval)

    def __enter__(self) -> "_PeakRSS":
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        self.base = self._rss()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.peak = max(self.peak, self._rss() - self.base)
        self._stop.set()
        self._thread.join()


def hardware_description(device: str) -> str:
    """CPU model and core/thread counts, or the CUDA device name."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


@contextlib.contextmanager
def _autocast(device: str, dtype: str) -> Iterator[None]:
    if dtype == "fp32":
        yield
        return
    if dtype != "bf16":
        raise ValueError(f"dtype must be 'fp32' or 'bf16', got {dtype!r}")
    with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16):
        yield


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _build_peer(name: str) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise RuntimeError(
            "peer backbones need timm: pip install 'biglittle-sam[dev]' or pass --peers none"
        ) from None
    model = timm.create_model(name, pretrained=False, num_classes=0)

    class _Features(nn.Module):
        def __init__(self, backbone: nn.Module) -> None:
            super().__init__()
            self.backbone = backbone

        def forward(self, x: torch.Tensor) -> Any:
            return self.backbone.forward_features(x)

    return _Features(model)


def _fvcore_gmacs(model: nn.Module, size: int) -> Optional[float]:
    try:
        from fvcore.nn import FlopCountAnalysis
    except ImportError:
        return None
    logging.getLogger("fvcore").setLevel(logging.ERROR)
    with torch.no_grad():
        analysis = FlopCountAnalysis(model, torch.zeros(1, 3, size, size))
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        return analysis.total() / 1e9


@dataclass
class _Entry:
    result: ModelResult
    module: nn.Module
    prepare: Callable[[], None]  # sets the keep ratio before each timed pass


def _params_m(module: nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def _entries(cfg: BenchmarkConfig) -> List[_Entry]:
    entries: List[_Entry] = []
    overrides: Dict[str, Any] = {}
    if cfg.img_size is not None:
        overrides["img_size"] = cfg.img_size

    def noop() -> None:
        return None

    if cfg.sam:
        sam_cfg = get_config(cfg.sam)
        if isinstance(sam_cfg, BigLittleConfig):
            raise ValueError(f"--sam must name a plain SAM model, got big.LITTLE '{cfg.sam}'")
        if overrides:
            sam = build_sam_from_config(dataclasses.replace(sam_cfg, **overrides))
        else:
            sam = sam_model_registry[cfg.sam]()
        enc = sam.image_encoder
        size = enc.img_size
        entries.append(
            _Entry(
                ModelResult(
                    name=f"SAM {cfg.sam} (segment_anything)",
                    family="sam",
                    keep_ratio=None,
                    input_size=size,
                    params_m=_params_m(enc),
                    gmacs=encoder_gmacs(enc),
                    gmacs_source="analytic",
                ),
                enc,
                noop,
            )
        )
        if cfg.fast_sam:
            fast = ImageEncoderViTFused.from_sam(enc)
            entries.append(
                _Entry(
                    ModelResult(
                        name=f"SAM {cfg.sam}, fused attention (ours)",
                        family="fast_sam",
                        keep_ratio=None,
                        input_size=size,
                        params_m=_params_m(fast),
                        gmacs=encoder_gmacs(fast),
                        gmacs_source="analytic",
                        note="SAM's weights on the big block's dense path (SDPA)",
                    ),
                    fast,
                    noop,
                )
            )
    if cfg.model:
        bl = sam_model_registry[cfg.model](**overrides).image_encoder
        params = _params_m(bl)
        for r in cfg.keep_ratios:

            def prepare(r: float = r, bl: nn.Module = bl) -> None:
                set_keep_ratio(bl, r)

            entries.append(
                _Entry(
                    ModelResult(
                        name=f"{cfg.model} r={r:g}",
                        family="biglittle",
                        keep_ratio=r,
                        input_size=bl.img_size,
                        params_m=params,
                        gmacs=encoder_gmacs(bl, r),
                        gmacs_source="analytic",
                    ),
                    bl,
                    prepare,
                )
            )
    for peer in cfg.peers:
        if peer not in PEERS:
            raise ValueError(f"unknown peer {peer!r}; known peers: {', '.join(PEERS)}")
        module = _build_peer(peer)
        size = PEERS[peer]["size"]
        gmacs = _fvcore_gmacs(module, size)
        entries.append(
            _Entry(
                ModelResult(
                    name=f"{peer} ({PEERS[peer]['paper']})",
                    family="peer",
                    keep_ratio=None,
                    input_size=size,
                    params_m=_params_m(module),
                    gmacs=gmacs,
                    gmacs_source="fvcore" if gmacs is not None else "n/a",
                    note="timm backbone only, at its SAM input size",
                ),
                module,
                noop,
            )
        )
    return entries


def _time_once(entry: _Entry, x: torch.Tensor, cfg: BenchmarkConfig) -> float:
    entry.prepare()
    _sync(cfg.device)
    start = time.perf_counter()
    with torch.inference_mode(), _autocast(cfg.device, cfg.dtype):
        entry.module(x)
    _sync(cfg.device)
    return time.perf_counter() - start


def run_benchmark(
    cfg: BenchmarkConfig, progress: Optional[Callable[[str], None]] = None
) -> Dict[str, Any]:
    """Measure every model of ``cfg``; returns a JSON-ready dict with ``results`` and ``meta``."""
    say = progress or (lambda msg: None)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.repeats < 1 or cfg.batch_repeats < 1:
        raise ValueError("repeats and batch_repeats must be >= 1")
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    entries = _entries(cfg)
    for e in entries:
        e.module.to(device).eval()
    inputs: Dict[int, Dict[int, torch.Tensor]] = {}

    def batch(size: int, b: int) -> torch.Tensor:
        return inputs.setdefault(size, {}).setdefault(
            b, torch.randn(b, 3, size, size, device=device)
        )

    first, *others = list(cfg.batch_sizes)
    for e in entries:  # warm-up, and one pass measured for memory
        x = batch(e.result.input_size, first)
        for _ in range(cfg.warmup):
            _time_once(e, x, cfg)
        if cfg.memory:
            e.result.peak_memory_mb = _peak_memory_mb(e, x, cfg)
        say(f"warmed up {e.result.name}")
    for i in range(cfg.repeats):  # interleaved rounds
        for e in entries:
            e.result.latency_runs_s.append(_time_once(e, batch(e.result.input_size, first), cfg))
        say(f"batch {first}: round {i + 1}/{cfg.repeats} done")
    for e in entries:
        e.result.latency_s = statistics.median(e.result.latency_runs_s)
        e.result.images_per_s[first] = first / e.result.latency_s
    for b in others:
        runs: Dict[int, List[float]] = {id(e): [] for e in entries}
        for i in range(cfg.batch_repeats):
            for e in entries:
                runs[id(e)].append(_time_once(e, batch(e.result.input_size, b), cfg))
            say(f"batch {b}: round {i + 1}/{cfg.batch_repeats} done")
        for e in entries:
            e.result.images_per_s[b] = b / statistics.median(runs[id(e)])
    baseline = next((e.result for e in entries if e.result.family == "sam"), None)
    fast = next((e.result for e in entries if e.result.family == "fast_sam"), None)
    for e in entries:
        r = e.result
        if baseline is not None:
            r.speedup, r.flops_ratio, r.efficiency = _relative(r, baseline)
        if fast is not None and r.family == "biglittle":
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


def _peak_memory_mb(entry: _Entry, x: torch.Tensor, cfg: BenchmarkConfig) -> float:
    if cfg.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        _time_once(entry, x, cfg)
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    with _PeakRSS() as watch:
        _time_once(entry, x, cfg)
    return watch.peak / 2**20


def _fmt(value: Optional[float], spec: str = "", suffix: str = "") -> str:
    """``spec`` as given, or by default 3 significant digits for small values and 1 decimal else."""
    if value is None:
        return "-"
    if not spec:
        spec = ".1f" if abs(value) >= 10 else ".3g"
    return f"{value:{spec}}{suffix}"


def to_markdown(report: Dict[str, Any]) -> str:
    """The README table for a :func:`run_benchmark` report."""
    sizes = report["meta"]["config"]["batch_sizes"]
    head = ["model", "input", "params (M)", "GMACs", "latency (s)"]
    head += [f"img/s @{b}" for b in sizes]
    head += ["peak mem (MB)", "speedup", "GMACs ratio", "efficiency"]
    head += ["speedup vs fused SAM", "efficiency vs fused SAM"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report["results"]:
        ips = r["images_per_s"]
        row = [
            r["name"],
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
    return "\n".join(lines)


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
        "peer": "tab:gray",
    }
    families = (
        ("sam", "SAM"),
        ("fast_sam", "SAM, fused attention"),
        ("biglittle", "big.LITTLE"),
        ("peer", "peer backbones"),
    )
    for fam, label in families:
        rows = [r for r in report["results"] if r["family"] == fam and r["gmacs"] is not None]
        if not rows:
            continue
        ax.plot(
            [r["gmacs"] for r in rows],
            [r["latency_s"] for r in rows],
            "o-" if fam == "biglittle" else "o",
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
