"""Measured encoder speed: SAM ViT against big.LITTLE at several keep ratios, peers for context.

All models are timed in one process, interleaved round by round (SAM, then each big.LITTLE ratio,
then the peers, then again), so that a slow moment of a noisy machine hits every model alike; the
reported latency is the median of the rounds. Speedups and FLOPs-to-latency efficiency are taken
against the SAM encoder measured in the same run.

Optional rows: big.LITTLE with pooled keys/values (``pool_kv_ratios``), and with ``onnx`` the
exported encoders (SAM and big.LITTLE at each ratio) in onnxruntime. With ``compile`` every PyTorch
model goes through ``torch.compile`` first; the first call at each batch size (compilation included)
is timed apart, as ``compile_s``, and never counted in the latency.

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
import tempfile
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
from .runtime.amp import keep_norms_fp32

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
    """What to measure. Defaults: SAM ViT-B against bl_b at 1.0, 0.5, 0.25 and 0.1 (and pooled k/v
    at 0.5, 0.25 and 0.1), with peers, at batch 1, 4 and 8."""

    sam: str = "vit_b"  # baseline SAM encoder (registry name)
    fast_sam: bool = True  # also time SAM's weights on our fused dense path, to split the speedup
    model: str = "bl_b"  # big.LITTLE config (registry name)
    keep_ratios: Sequence[float] = (1.0, 0.5, 0.25, 0.1)
    peers: Sequence[str] = tuple(PEERS)  # timm backbones; empty to skip
    device: str = "cpu"
    dtype: str = "fp32"  # "fp32" or "bf16" (autocast; LayerNorm stays fp32)
    batch_sizes: Sequence[int] = (1, 4, 8)  # latency at the first; images/s at every one
    # Peers, pooled-k/v and ONNX rows are measured only up to this batch size (None: every one):
    # batch 8 of every row would double the run for rows that only give context.
    max_batch_others: Optional[int] = 4
    pool_kv_ratios: Sequence[float] = (0.5, 0.25, 0.1)  # big.LITTLE with pooled keys/values
    onnx: bool = False  # also time the exported SAM and big.LITTLE encoders in onnxruntime
    onnx_opset: int = 17
    compile: bool = False  # torch.compile every PyTorch model first (compile time reported apart)
    compile_backend: str = "inductor"
    warmup: int = 1  # untimed passes per model at the first batch size
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
    family: str  # "sam", "fast_sam", "biglittle", "biglittle_pooled", "onnx" or "peer"
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
    runtime: str = "pytorch"  # "pytorch", "pytorch+compile" or "onnxruntime"
    compile_s: Dict[int, float] = field(default_factory=dict)  # first call per batch (compiling)
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
    module: Optional[nn.Module]  # None for an onnxruntime session
    prepare: Callable[[], None]  # sets the keep ratio before each timed pass
    fn: Optional[Callable[[torch.Tensor], Any]] = None  # what is timed; default: module

    def __call__(self, x: torch.Tensor) -> Any:
        run = self.fn if self.fn is not None else self.module
        return run(x)  # type: ignore[misc]

    def measured_at(self, batch: int, cfg: "BenchmarkConfig") -> bool:
        """Whether this row is timed at ``batch`` (context rows stop at ``max_batch_others``)."""
        core = self.result.family in CORE_FAMILIES
        return core or cfg.max_batch_others is None or batch <= cfg.max_batch_others


# Rows measured at every batch size; the others stop at BenchmarkConfig.max_batch_others.
CORE_FAMILIES = ("sam", "fast_sam", "biglittle")


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
        entries.extend(_pooled_entries(cfg, bl, overrides))
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


def _pooled_entries(cfg: BenchmarkConfig, bl: nn.Module, overrides: Dict[str, Any]) -> List[_Entry]:
    """Rows of big.LITTLE with pooled keys/values, on a twin of ``bl`` (same weights)."""
    if not cfg.pool_kv_ratios:
        return []
    pooled = sam_model_registry[cfg.model](pool_kv=True, **overrides).image_encoder
    pooled.load_state_dict(bl.state_dict(), strict=True)
    params = _params_m(pooled)
    entries = []
    for r in cfg.pool_kv_ratios:

        def prepare(r: float = r, enc: nn.Module = pooled) -> None:
            set_keep_ratio(enc, r)

        prepare()
        entries.append(
            _Entry(
                ModelResult(
                    name=f"{cfg.model} r={r:g} pooled k/v",
                    family="biglittle_pooled",
                    keep_ratio=r,
                    input_size=pooled.img_size,
                    params_m=params,
                    gmacs=encoder_gmacs(pooled, r),
                    gmacs_source="analytic",
                    note="unrouted tokens' keys/values averaged 2x2",
                ),
                pooled,
                prepare,
            )
        )
    return entries


def _onnx_entries(
    cfg: BenchmarkConfig, entries: Sequence[_Entry], folder: Path, say: Callable[[str], None]
) -> List[_Entry]:
    """The SAM row and every big.LITTLE row exported to ONNX, each in an onnxruntime session."""
    try:
        from .export import OnnxImageEncoder, export_image_encoder
    except ImportError as e:
        raise RuntimeError(f"--onnx needs biglittle_sam.export and its extra: {e}") from None
    if not cfg.device.startswith("cpu"):
        raise ValueError("--onnx times onnxruntime's CPU provider; use --device cpu")
    out: List[_Entry] = []
    for e in entries:
        r = e.result
        if r.family not in ("sam", "biglittle") or e.module is None:
            continue
        name = f"{r.family}_{r.keep_ratio if r.keep_ratio is not None else 1.0:g}.onnx"
        start = time.perf_counter()
        path = export_image_encoder(
            e.module, folder / name, keep_ratio=r.keep_ratio, opset=cfg.onnx_opset
        )
        say(f"exported {r.name} to ONNX in {time.perf_counter() - start:.1f} s")
        session = OnnxImageEncoder(path, threads=cfg.threads)
        result = dataclasses.replace(
            r,
            name=f"{r.name.split(' (')[0]} (onnxruntime)",
            family="onnx",
            runtime="onnxruntime",
            latency_runs_s=[],
            images_per_s={},
            compile_s={},
            note=f"exported with opset {cfg.onnx_opset}; fp32 whatever --dtype",
        )
        out.append(_Entry(result, None, lambda: None, session))
    return out


def _compile(entries: Sequence[_Entry], cfg: BenchmarkConfig) -> None:
    """Wrap every PyTorch row in ``torch.compile`` (compilation happens at the first call)."""
    # One graph per model, keep ratio and batch size: more than dynamo's default cache of 8 per
    # forward (all big.LITTLE rows share ImageEncoderBigLittle.forward), past which it would
    # silently fall back to eager.
    dynamo = torch._dynamo.config
    needed = 4 * (len(entries) + 1) * max(1, len(cfg.batch_sizes))
    dynamo.cache_size_limit = max(dynamo.cache_size_limit, needed)
    if hasattr(dynamo, "accumulated_cache_size_limit"):
        dynamo.accumulated_cache_size_limit = max(dynamo.accumulated_cache_size_limit, 4 * needed)
    compiled: Dict[int, Callable[[torch.Tensor], Any]] = {}
    for e in entries:
        if e.module is None:
            continue
        key = id(e.module)  # rows sharing a module (the ratios) share one compiled wrapper
        if key not in compiled:
            compiled[key] = torch.compile(e.module, backend=cfg.compile_backend, dynamic=False)
        e.fn = compiled[key]
        e.result.runtime = "pytorch+compile"


def _time_once(entry: _Entry, x: torch.Tensor, cfg: BenchmarkConfig) -> float:
    entry.prepare()
    _sync(cfg.device)
    start = time.perf_counter()
    with torch.inference_mode(), _autocast(cfg.device, cfg.dtype):
        entry(x)
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
        if e.module is not None:
            e.module.to(device).eval()
            if cfg.dtype != "fp32":  # statistics over 768+ channels lose too much in bf16
                keep_norms_fp32(e.module)
    with contextlib.ExitStack() as stack:
        if cfg.onnx:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bl_onnx_")))
            entries += _onnx_entries(cfg, entries, folder, say)
        if cfg.compile:
            _compile(entries, cfg)
        _measure(entries, cfg, device, say)
    return _report(entries, cfg)


def _measure(
    entries: Sequence[_Entry],
    cfg: BenchmarkConfig,
    device: torch.device,
    say: Callable[[str], None],
) -> None:
    """Warm up, then time interleaved rounds at each batch size; fills the results in place."""
    inputs: Dict[int, Dict[int, torch.Tensor]] = {}

    def batch(size: int, b: int) -> torch.Tensor:
        return inputs.setdefault(size, {}).setdefault(
            b, torch.randn(b, 3, size, size, device=device)
        )

    first, *others = list(cfg.batch_sizes)
    for e in entries:  # warm-up (compilation first), and one pass measured for memory
        x = batch(e.result.input_size, first)
        if cfg.compile and e.module is not None:
            e.result.compile_s[first] = _time_once(e, x, cfg)
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
        rows = [e for e in entries if e.measured_at(b, cfg)]
        for e in rows:
            if cfg.compile and e.module is not None:  # a new input shape compiles a new graph
                x = batch(e.result.input_size, b)
                e.result.compile_s[b] = _time_once(e, x, cfg)
                # Untimed passes as at the first batch size: a module that fills a cache on its
                # first pass makes dynamo recompile on the second.
                for _ in range(cfg.warmup):
                    _time_once(e, x, cfg)
        runs: Dict[int, List[float]] = {id(e): [] for e in rows}
        for i in range(cfg.batch_repeats):
            for e in rows:
                runs[id(e)].append(_time_once(e, batch(e.result.input_size, b), cfg))
            say(f"batch {b}: round {i + 1}/{cfg.batch_repeats} done")
        for e in rows:
            e.result.images_per_s[b] = b / statistics.median(runs[id(e)])


def _report(entries: Sequence[_Entry], cfg: BenchmarkConfig) -> Dict[str, Any]:
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
    config = report["meta"]["config"]
    sizes = config["batch_sizes"]
    compiled = bool(config.get("compile"))
    head = ["model", "input", "params (M)", "GMACs", "latency (s)"]
    head += [f"img/s @{b}" for b in sizes]
    head += ["peak mem (MB)", "speedup", "GMACs ratio", "efficiency"]
    head += ["speedup vs fused SAM", "efficiency vs fused SAM"]
    if compiled:
        head += [f"compile (s) @{sizes[0]}"]
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
