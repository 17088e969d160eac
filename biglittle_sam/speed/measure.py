"""The speed benchmark's measurement: warm-up, interleaved timed rounds, peak memory.

All models are timed in one process, interleaved round by round (SAM, then each big.LITTLE ratio,
then the peers, then again), so that a slow moment of a noisy machine hits every model alike; the
reported latency is the median of the rounds. With ``compile`` every PyTorch model goes through
``torch.compile`` first; the first call at each batch size (compilation included) is timed apart,
as ``compile_s``, and never counted in the latency.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import torch

from ..quantize import quantize_encoder_int8
from ..runtime.amp import keep_norms_fp32
from .report import build_report
from .rows import BenchmarkConfig, Row, build_rows, onnx_rows

__all__ = ["run_benchmark"]


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


@contextlib.contextmanager
def _autocast(device: str, dtype: str) -> Iterator[None]:
    """bf16 autocast on ``device``, or nothing for fp32."""
    if dtype == "fp32":
        yield
        return
    if dtype != "bf16":
        raise ValueError(f"dtype must be 'fp32' or 'bf16', got {dtype!r}")
    with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16):
        yield


def _sync(device: str) -> None:
    """Wait for queued CUDA work, so the clock measures it."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def compile_rows(entries: Sequence[Row], cfg: BenchmarkConfig) -> None:
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


def _quantize_rows(entries: Sequence[Row], cfg: BenchmarkConfig) -> None:
    """Dynamic int8 Linear layers in every PyTorch row, in place (rows sharing a module, the keep
    ratios, share its quantised form)."""
    if not cfg.device.startswith("cpu"):
        raise ValueError("the pytorch-int8 runtime is dynamic int8 on the CPU; use --device cpu")
    done = set()
    for e in entries:
        if e.module is not None and id(e.module) not in done:
            quantize_encoder_int8(e.module, inplace=True)
            done.add(id(e.module))
        e.result.runtime = "pytorch-int8"


def _time_once(entry: Row, x: torch.Tensor, cfg: BenchmarkConfig) -> float:
    """Seconds of one pass of ``entry`` on ``x`` (B x 3 x S x S), after its ``prepare``."""
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
    if cfg.runtimes:
        raise ValueError(
            "run_benchmark times one runtime (cfg.runtime); several runtimes (cfg.runtimes) run "
            "through run_runtimes, one subprocess each"
        )
    onnx_only = cfg.runtime.startswith("onnxruntime")
    if cfg.family == "sam3":  # transformers' SAM 3 backbone against its swap (needs [hf])
        from .sam3_rows import sam3_rows

        entries = sam3_rows(cfg)
    elif cfg.runtime == "transformers":  # transformers' SAM against the swap (needs [hf])
        from .hf_rows import transformers_rows

        entries = transformers_rows(cfg)
    else:
        entries = build_rows(cfg)
    for e in entries:
        if e.module is not None:
            e.module.to(device).eval()
            if cfg.dtype != "fp32":  # statistics over 768+ channels lose too much in bf16
                keep_norms_fp32(e.module)
    if cfg.runtime == "pytorch-int8":
        _quantize_rows(entries, cfg)
    with contextlib.ExitStack() as stack:
        if cfg.onnx or onnx_only:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bl_onnx_")))
            exported = onnx_rows(
                cfg, entries, folder, say, cfg.runtime if onnx_only else "onnxruntime"
            )
            entries = exported if onnx_only else entries + exported
        if cfg.compile:
            compile_rows(entries, cfg)
        _measure(entries, cfg, device, say)
    return build_report(entries, cfg)


def _measure(
    entries: Sequence[Row],
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


def _peak_memory_mb(entry: Row, x: torch.Tensor, cfg: BenchmarkConfig) -> float:
    """Memory one pass adds at its peak, in MB (CUDA allocator, or the process's RSS on CPU)."""
    if cfg.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        _time_once(entry, x, cfg)
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    with _PeakRSS() as watch:
        _time_once(entry, x, cfg)
    return watch.peak / 2**20
