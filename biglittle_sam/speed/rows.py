"""The speed benchmark's rows: what is measured, and each model built ready to time.

A row is one model at one setting: upstream SAM's encoder, SAM's weights on the fused dense path,
big.LITTLE at each keep ratio (and with pooled keys/values), the timm backbones of peer methods,
and optionally every SAM and big.LITTLE row exported to ONNX. Weights are random (nothing is
downloaded): speed does not depend on the weights' values, except through routing, whose capacity
is static.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..build_sam import build_sam_from_config, sam_model_registry, set_keep_ratio
from ..config import BigLittleConfig, get_config
from ..export import OnnxImageEncoder, export_backbone, export_image_encoder, quantize_onnx
from ..flops import encoder_gmacs
from ..model_spec import model_spec_arg
from ..modeling import ImageEncoderViTFused
from ..runtime.cli import flag

__all__ = [
    "BenchmarkConfig",
    "CORE_FAMILIES",
    "RUNTIMES",
    "ModelResult",
    "PEERS",
    "Row",
    "build_rows",
    "onnx_rows",
]

# timm backbones of the peers, at the input size their SAM variant feeds them. Backbone only: the
# peers' SAM necks (and MobileSAM's / EdgeSAM's stride changes) are not included, so these are
# lower bounds.
PEERS: Dict[str, Dict[str, Any]] = {
    "repvit_m1": {"paper": "EdgeSAM (RepViT-M1)", "size": 1024},
    "tiny_vit_5m_224": {"paper": "MobileSAM (TinyViT-5M)", "size": 1024},
    "efficientvit_l1": {"paper": "EfficientViT-SAM-L1", "size": 512},
    "sam2_hiera_tiny": {"paper": "SAM 2 (Hiera-T)", "size": 1024},
}


# Runtimes a run can time its models in, one per process (see :mod:`.runtimes`): PyTorch eager,
# PyTorch with dynamic int8 Linear layers (:func:`biglittle_sam.quantize.quantize_encoder_int8`),
# and the exported encoders in onnxruntime, fp32 or dynamically quantised to int8.
# "transformers": transformers' own SamModel against it swapped by biglittle_sam.hf.to_biglittle
# (:mod:`.hf_rows`; needs transformers).
RUNTIMES = ("pytorch", "pytorch-int8", "onnxruntime", "onnxruntime-int8", "transformers")
# Row sets (BenchmarkConfig.family): SAM 1 with its big.LITTLE models, or SAM 3's backbone.
FAMILIES = ("sam", "sam3")


@dataclass
class BenchmarkConfig:
    """What to measure. Defaults: SAM ViT-B against bl_b at 1.0, 0.5, 0.25 and 0.1 (and pooled k/v
    at 0.5, 0.25 and 0.1), with peers, at batch 1, 4 and 8.

    Every field but ``seed`` and ``runtime`` is a flag of ``biglittle-sam-benchmark``; its help is
    the field's ``flag(help=...)`` or else its comment.
    """

    sam: str = flag(
        "vit_b",
        "baseline SAM: a registry name (speed does not depend on the weights)",
        type=model_spec_arg,
        metavar="NAME",
    )
    # Also time SAM's weights on our fused dense path, to split the speedup.
    fast_sam: bool = flag(
        True,
        "skip the row of SAM's weights on our fused attention path (default: timed)",
        name="--no-fast-sam",
        action="store_false",
    )
    model: str = flag(
        "bl_b",
        "big.LITTLE model: a registry name, optionally with one keep ratio (the model-spec form "
        "every tool takes; speed does not depend on the weights, so no checkpoint)",
        type=model_spec_arg,
        metavar="NAME[@RATIO]",
    )
    keep_ratios: Tuple[float, ...] = (1.0, 0.5, 0.25, 0.1)  # big.LITTLE keep ratios
    # What an official SAM checkpoint gives with no training: SAM's blocks, no LITTLE blocks.
    training_free: bool = flag(
        False, "time the big.LITTLE rows in the training-free mode (no LITTLE blocks or routers)"
    )
    # The row set: "sam" (SAM 1 and big.LITTLE, above); "sam3": transformers' SAM 3 ViT backbone
    # (1008 px) against its training-free swap at keep_ratios (speed/sam3_rows.py, dispatched by
    # measure.run_benchmark; needs transformers).
    family: str = flag("sam", "row set: sam (SAM 1) or sam3 (SAM 3's backbone)", choices=FAMILIES)
    # timm backbones; empty to skip (the command line's 'none').
    peers: Tuple[str, ...] = flag(tuple(PEERS), "timm peer backbones, or 'none' (needs timm)")
    # The command line also takes auto, which it resolves to a torch device.
    device: str = flag("cpu", "auto (CUDA when available), cpu, cuda or cuda:N")
    dtype: str = flag("fp32", "bf16: autocast, LayerNorm stays fp32", choices=("fp32", "bf16"))
    batch_sizes: Tuple[int, ...] = (1, 4, 8)  # latency at the first, images/s at every one
    # Peers, pooled-k/v and ONNX rows are measured only up to this batch size (None: every one):
    # batch 8 of every row would double the run for rows that only give context.
    max_batch_others: Optional[int] = flag(
        4, "largest batch for peers, pooled-k/v and ONNX rows; 0 for no limit"
    )
    # big.LITTLE with pooled keys/values; empty to skip (the command line's 'none').
    pool_kv_ratios: Tuple[float, ...] = flag(
        (0.5, 0.25, 0.1), "keep ratios of the pooled keys/values rows, or 'none'", type=str
    )
    onnx: bool = flag(
        False,
        "also export SAM and big.LITTLE at each ratio to ONNX and time them in onnxruntime",
    )
    onnx_opset: int = 17  # ONNX opset of --onnx
    # onnxruntime's threads spin between operators (its own default) or sleep. None: they spin in
    # a run whose runtime is an onnxruntime one (a process of its own), and sleep for --onnx rows
    # timed beside PyTorch's, where spinning would take the CPU from the next row.
    onnx_spinning: Optional[bool] = flag(
        None,
        "onnxruntime's threads spin between operators (its own default) or sleep (default: spin "
        "in the onnxruntime runtimes' own processes, sleep for --onnx rows beside PyTorch's)",
    )
    compile: bool = flag(
        False,
        "torch.compile every PyTorch model before timing (compile time reported apart)",
    )
    compile_backend: str = "inductor"  # torch.compile backend
    warmup: int = 1  # untimed passes per model at the first batch size
    repeats: int = 5  # timed rounds at the first batch size (median reported)
    batch_repeats: int = 2  # timed rounds at the other batch sizes
    img_size: Optional[int] = None  # override the input size (default: the model's, 1024)
    threads: Optional[int] = None  # torch CPU threads (default: torch's choice, all cores)
    # Measure peak memory of one pass.
    memory: bool = flag(
        True,
        "skip the peak-memory pass (default: measured)",
        name="--no-memory",
        action="store_false",
    )
    seed: int = flag(0, cli=False)
    # The runtime every row of this run is timed in (one of RUNTIMES). "pytorch-int8" quantises
    # every model's Linear layers; the onnxruntime ones export SAM, fused SAM, big.LITTLE and the
    # peers' backbones and time only the exports. Speedups are against SAM in it.
    runtime: str = flag("pytorch", cli=False)
    # Runtimes to time, each in a subprocess of its own, merged into one report (empty: only
    # ``runtime``, in this process). See :func:`.runtimes.run_runtimes`.
    runtimes: Tuple[str, ...] = flag(
        (),
        f"time every model in each runtime ({', '.join(RUNTIMES)}), one subprocess per runtime, "
        "with speedups against SAM in the same runtime (default: PyTorch eager only, in this "
        "process)",
        choices=RUNTIMES,
        metavar="RUNTIME",
    )

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(
                f"unknown family {self.family!r}; expected one of {', '.join(FAMILIES)}"
            )
        for name in (self.runtime, *self.runtimes):
            if name not in RUNTIMES:
                raise ValueError(f"unknown runtime {name!r}; expected one of {', '.join(RUNTIMES)}")
        cpu_only = sorted({self.runtime, *self.runtimes} - {"pytorch", "transformers"})
        if cpu_only and not self.device.startswith("cpu"):
            raise ValueError(
                f"runtimes {', '.join(cpu_only)} run on the CPU (dynamic int8, onnxruntime's CPU "
                f"provider); use --device cpu, not {self.device}"
            )


@dataclass
class ModelResult:
    """The figures of one row of the benchmark (what the report holds)."""

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
    # "pytorch", "pytorch+compile", "pytorch-int8", "onnxruntime", "onnxruntime-int8" or
    # "transformers"
    runtime: str = "pytorch"
    # Multi-runtime runs: against upstream SAM in PyTorch eager fp32 (``speedup`` is against SAM
    # in this row's own runtime).
    speedup_vs_sam_pytorch: Optional[float] = None
    compile_s: Dict[int, float] = field(default_factory=dict)  # first call per batch (compiling)
    note: str = ""


def _build_peer(name: str) -> nn.Module:
    """A timm backbone with random weights, returning its features (B x 3 x S x S in)."""
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
    """fvcore's count of one ``size`` x ``size`` image, or None without fvcore."""
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


# Rows measured at every batch size; the others stop at BenchmarkConfig.max_batch_others.
CORE_FAMILIES = ("sam", "fast_sam", "biglittle")


@dataclass
class Row:
    """A row to time: the model (or an onnxruntime session), what to set before each pass, and the
    :class:`ModelResult` that measuring fills in."""

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


def _params_m(module: nn.Module) -> float:
    """Parameters, in millions."""
    return sum(p.numel() for p in module.parameters()) / 1e6


def _noop() -> None:
    """The ``prepare`` of rows with nothing to set."""
    return None


def build_rows(cfg: BenchmarkConfig) -> List[Row]:
    """Every PyTorch row of ``cfg``, in timing order: SAM, fused SAM, big.LITTLE, pooled, peers."""
    overrides: Dict[str, Any] = {}
    if cfg.img_size is not None:
        overrides["img_size"] = cfg.img_size
    entries: List[Row] = _sam_rows(cfg, overrides) if cfg.sam else []
    if cfg.model:
        mode = {"training_free": True} if cfg.training_free else {}
        bl = sam_model_registry[cfg.model](**overrides, **mode).image_encoder
        suffix = ", training-free" if cfg.training_free else ""
        entries.extend(_ratio_rows(cfg.model, bl, cfg.keep_ratios, "biglittle", suffix))
        entries.extend(_pooled_rows(cfg, bl, overrides))
    entries.extend(_peer_row(peer) for peer in cfg.peers)
    return entries


def _sam_rows(cfg: BenchmarkConfig, overrides: Dict[str, Any]) -> List[Row]:
    """Upstream SAM's encoder, and (``cfg.fast_sam``) its weights on our fused dense path."""
    sam_cfg = get_config(cfg.sam)
    if isinstance(sam_cfg, BigLittleConfig):
        raise ValueError(f"--sam must name a plain SAM model, got big.LITTLE '{cfg.sam}'")
    if overrides:
        sam = build_sam_from_config(dataclasses.replace(sam_cfg, **overrides))
    else:
        sam = sam_model_registry[cfg.sam]()
    enc = sam.image_encoder
    rows = [Row(_analytic_result(f"SAM {cfg.sam} (segment_anything)", "sam", enc), enc, _noop)]
    if cfg.fast_sam:
        fast = ImageEncoderViTFused.from_sam(enc)
        name = f"SAM {cfg.sam}, fused attention (ours)"
        note = "SAM's weights on the big block's dense path (SDPA)"
        rows.append(Row(_analytic_result(name, "fast_sam", fast, note=note), fast, _noop))
    return rows


def _analytic_result(
    name: str, family: str, encoder: nn.Module, ratio: Optional[float] = None, note: str = ""
) -> ModelResult:
    """The figures known before timing ``encoder`` (at keep ratio ``ratio``): size, GMACs."""
    return ModelResult(
        name=name,
        family=family,
        keep_ratio=ratio,
        input_size=encoder.img_size,
        params_m=_params_m(encoder),
        gmacs=encoder_gmacs(encoder, ratio),
        gmacs_source="analytic",
        note=note,
    )


def _ratio_rows(
    model: str,
    encoder: nn.Module,
    ratios: Sequence[float],
    family: str,
    suffix: str = "",
    note: str = "",
    set_now: bool = False,
) -> List[Row]:
    """One row of the big.LITTLE ``encoder`` per keep ratio; each sets its ratio before a pass
    (``set_now``: also once now, as each row is made)."""
    rows = []
    for r in ratios:

        def prepare(r: float = r, enc: nn.Module = encoder) -> None:
            set_keep_ratio(enc, r)

        if set_now:
            prepare()
        result = _analytic_result(f"{model} r={r:g}{suffix}", family, encoder, r, note)
        rows.append(Row(result, encoder, prepare))
    return rows


def _peer_row(peer: str) -> Row:
    """A timm peer backbone's row, at its SAM variant's input size (GMACs from fvcore)."""
    if peer not in PEERS:
        raise ValueError(f"unknown peer {peer!r}; known peers: {', '.join(PEERS)}")
    module = _build_peer(peer)
    size = PEERS[peer]["size"]
    gmacs = _fvcore_gmacs(module, size)
    result = ModelResult(
        name=f"{peer} ({PEERS[peer]['paper']})",
        family="peer",
        keep_ratio=None,
        input_size=size,
        params_m=_params_m(module),
        gmacs=gmacs,
        gmacs_source="fvcore" if gmacs is not None else "n/a",
        note="timm backbone only, at its SAM input size",
    )
    return Row(result, module, _noop)


def _pooled_rows(cfg: BenchmarkConfig, bl: nn.Module, overrides: Dict[str, Any]) -> List[Row]:
    """Rows of big.LITTLE with pooled keys/values, on a twin of ``bl`` (same weights)."""
    if not cfg.pool_kv_ratios:
        return []
    pooled = sam_model_registry[cfg.model](pool_kv=True, **overrides).image_encoder
    pooled.load_state_dict(bl.state_dict(), strict=True)
    note = "unrouted tokens' keys/values averaged 2x2"
    return _ratio_rows(
        cfg.model, pooled, cfg.pool_kv_ratios, "biglittle_pooled", " pooled k/v", note, True
    )


def onnx_spins(setting: Optional[bool], own_process: bool) -> bool:
    """Whether onnxruntime's threads spin for a row: ``setting`` (``BenchmarkConfig.onnx_spinning``)
    when given, else yes in an onnxruntime runtime's own process and no beside PyTorch's rows."""
    return own_process if setting is None else setting


def onnx_rows(
    cfg: BenchmarkConfig,
    entries: Sequence[Row],
    folder: Path,
    say: Callable[[str], None],
    runtime: str = "onnxruntime",
) -> List[Row]:
    """Rows of ``entries`` exported to ONNX, each in an onnxruntime session.

    ``runtime`` "onnxruntime" (``--onnx``: extra rows beside PyTorch's) exports the SAM and
    big.LITTLE rows as family "onnx". In a run whose ``cfg.runtime`` is an onnxruntime one, every
    SAM, fused SAM, big.LITTLE (pooled too) and peer row is exported and keeps its family, so
    speedups are against SAM's export; "onnxruntime-int8" times the files after
    ``quantize_onnx``. Peers go through :func:`export_backbone` (their timm backbone only).
    """
    if not cfg.device.startswith("cpu"):
        raise ValueError("onnxruntime rows run onnxruntime's CPU provider; use --device cpu")
    only = cfg.runtime.startswith("onnxruntime")
    families = CORE_FAMILIES + ("biglittle_pooled", "peer") if only else ("sam", "biglittle")
    int8 = runtime == "onnxruntime-int8"
    out: List[Row] = []
    for index, e in enumerate(entries):
        r = e.result
        if r.family not in families or e.module is None:
            continue
        ratio = r.keep_ratio if r.keep_ratio is not None else 1.0
        stem = f"{index}_{r.family}_{ratio:g}"
        start = time.perf_counter()
        if r.family == "peer":
            path = export_backbone(
                e.module, folder / f"{stem}.onnx", r.input_size, cfg.onnx_opset, name=r.name
            )
        else:
            path = export_image_encoder(
                e.module, folder / f"{stem}.onnx", keep_ratio=r.keep_ratio, opset=cfg.onnx_opset
            )
        if int8:
            path = quantize_onnx(path, folder / f"{stem}.int8.onnx")
        say(f"exported {r.name} to ONNX in {time.perf_counter() - start:.1f} s")
        spinning = onnx_spins(cfg.onnx_spinning, own_process=only)
        session = OnnxImageEncoder(path, threads=cfg.threads, spinning=spinning)
        result = dataclasses.replace(
            r,
            name=r.name if only else f"{r.name.split(' (')[0]} (onnxruntime)",
            family=r.family if only else "onnx",
            runtime=runtime,
            latency_runs_s=[],
            images_per_s={},
            compile_s={},
            note=(f"{r.note}; " if r.family == "peer" else "")
            + f"exported with opset {cfg.onnx_opset}; "
            + ("dynamic int8 (quantize_onnx)" if int8 else "fp32 whatever --dtype")
            + ("; threads spin" if spinning else "; threads sleep"),
        )
        out.append(Row(result, None, lambda: None, session))
    return out
