"""Where one encoder's forward pass spends its time: ``torch.profiler`` by operator.

``profile_encoder("bl_b", keep_ratio=0.25)`` builds the model with random weights (routing capacity
is static, so the work does not depend on the weights), warms it up, profiles ``steps`` forward
passes and returns the operators sorted by self CPU time. It also counts the operators that make
the host wait for a result (``aten::item``, ``aten::nonzero``...): the forward pass should have
none, so that CUDA launches run ahead and ``torch.compile`` gets one graph.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Dict, List, Optional

import torch
from torch.profiler import ProfilerActivity, profile

from .build_sam import build_sam_from_config, sam_model_registry
from .config import BigLittleConfig, get_config
from .modeling import ImageEncoderBigLittle

__all__ = [
    "OperatorTime",
    "EncoderProfile",
    "ProfileSettings",
    "profile_encoder",
    "format_table",
    "HOST_SYNC_OPS",
]

# Operators that copy a tensor's value to the host (a device sync on CUDA) or whose output shape
# depends on the data.
HOST_SYNC_OPS = (
    "aten::item",
    "aten::_local_scalar_dense",
    "aten::nonzero",
    "aten::masked_select",
    "aten::unique",
    "aten::_unique2",
)


@dataclass(frozen=True)
class ProfileSettings:
    """What :func:`profile_encoder` profiles, and how: its defaults, and the flags of
    ``biglittle-sam-profile``."""

    model: str = "bl_b"  # registry name
    keep_ratio: Optional[float] = None  # big.LITTLE keep ratio (default: the config's)
    pool_kv: bool = False  # big.LITTLE: pooled keys/values
    img_size: Optional[int] = None  # override the input size (default: the config's, 1024)
    batch_size: int = 1  # images per forward pass
    warmup: int = 1  # unprofiled passes
    steps: int = 1  # profiled passes
    threads: Optional[int] = None  # torch CPU threads (default: torch's choice)


@dataclass
class OperatorTime:
    """One operator's totals over the profiled steps."""

    name: str
    calls: int
    self_cpu_ms: float
    cpu_total_ms: float
    self_cpu_share: float  # of the summed self CPU time of every operator


@dataclass
class EncoderProfile:
    """The result of :func:`profile_encoder`."""

    model: str
    keep_ratio: Optional[float]
    pool_kv: bool
    batch_size: int
    img_size: int
    steps: int
    threads: int
    wall_s_per_step: float  # forward time per step, measured around the profiled steps
    self_cpu_total_ms: float
    operators: List[OperatorTime] = field(default_factory=list)  # sorted by self CPU time
    host_syncs: Dict[str, int] = field(default_factory=dict)  # HOST_SYNC_OPS seen, with counts

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def _build(model: str, keep_ratio: Optional[float], pool_kv: bool, img_size: Optional[int]) -> Any:
    config = get_config(model)
    overrides: Dict[str, Any] = {}
    if img_size is not None:
        overrides["img_size"] = img_size
    if isinstance(config, BigLittleConfig):
        if pool_kv:
            overrides["pool_kv"] = True
        return sam_model_registry[model](keep_ratio=keep_ratio, **overrides).image_encoder
    if pool_kv:
        raise ValueError(f"pool_kv is a big.LITTLE option; '{model}' is plain SAM")
    if overrides:  # upstream builders take no overrides
        return build_sam_from_config(replace(config, **overrides)).image_encoder
    return sam_model_registry[model](keep_ratio=keep_ratio).image_encoder


def profile_encoder(
    model: str = ProfileSettings.model,
    keep_ratio: Optional[float] = ProfileSettings.keep_ratio,
    pool_kv: bool = ProfileSettings.pool_kv,
    batch_size: int = ProfileSettings.batch_size,
    img_size: Optional[int] = ProfileSettings.img_size,
    warmup: int = ProfileSettings.warmup,
    steps: int = ProfileSettings.steps,
    threads: Optional[int] = ProfileSettings.threads,
    seed: int = 0,
) -> EncoderProfile:
    """Profile the image encoder of registry model ``model`` on random input (CPU); the defaults
    are :class:`ProfileSettings`'s.

    Arguments:
      model: registry name (``bl_b``, ``vit_b``, ``bl_tiny``...).
      keep_ratio: big.LITTLE keep ratio; None keeps the config's.
      pool_kv: big.LITTLE with pooled keys/values.
      batch_size: images per forward pass.
      img_size: override the input side (default: the config's, 1024 for full-size models).
      warmup: unprofiled passes first.
      steps: profiled passes.
      threads: torch threads (None: torch's default).
      seed: seeds the weights and the input.

    Returns:
      an :class:`EncoderProfile`.
    """
    if batch_size < 1 or steps < 1 or warmup < 0:
        raise ValueError(
            f"need batch_size >= 1, steps >= 1, warmup >= 0; got {batch_size}, {steps}, {warmup}"
        )
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    encoder = _build(model, keep_ratio, pool_kv, img_size).eval()
    big_little = isinstance(encoder, ImageEncoderBigLittle)
    size = int(encoder.img_size)
    x = torch.randn(batch_size, 3, size, size)
    with torch.inference_mode():
        for _ in range(warmup):
            encoder(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            for _ in range(steps):
                encoder(x)
            wall = (time.perf_counter() - start) / steps
    events = prof.key_averages()
    total_us = sum(e.self_cpu_time_total for e in events) or 1.0
    operators = sorted(
        (
            OperatorTime(
                name=e.key,
                calls=int(e.count),
                self_cpu_ms=e.self_cpu_time_total / 1e3,
                cpu_total_ms=e.cpu_time_total / 1e3,
                self_cpu_share=e.self_cpu_time_total / total_us,
            )
            for e in events
        ),
        key=lambda o: o.self_cpu_ms,
        reverse=True,
    )
    syncs = {o.name: o.calls for o in operators if o.name in HOST_SYNC_OPS}
    return EncoderProfile(
        model=model,
        keep_ratio=encoder.keep_ratio if big_little else None,
        pool_kv=encoder.pool_kv if big_little else False,
        batch_size=batch_size,
        img_size=size,
        steps=steps,
        threads=torch.get_num_threads(),
        wall_s_per_step=wall,
        self_cpu_total_ms=total_us / 1e3,
        operators=operators,
        host_syncs=syncs,
    )


def format_table(result: EncoderProfile, top: int = 15) -> str:
    """A markdown table of the ``top`` operators by self CPU time, with a header line."""
    ratio = "" if result.keep_ratio is None else f" r={result.keep_ratio:g}"
    pooled = " pooled k/v" if result.pool_kv else ""
    lines = [
        f"{result.model}{ratio}{pooled}, batch {result.batch_size}, {result.img_size}x"
        f"{result.img_size}, {result.threads} threads: {result.wall_s_per_step:.3f} s per forward "
        f"(profiled), {result.self_cpu_total_ms / result.steps:.0f} ms self CPU per step",
        "",
        "| operator | calls / step | self CPU (ms / step) | share | CPU total (ms / step) |",
        "|---|---|---|---|---|",
    ]
    steps = result.steps
    for op in result.operators[:top]:
        lines.append(
            f"| {op.name} | {op.calls / steps:g} | {op.self_cpu_ms / steps:.1f} | "
            f"{100 * op.self_cpu_share:.1f}% | {op.cpu_total_ms / steps:.1f} |"
        )
    lines.append("")
    if result.host_syncs:
        found = ", ".join(f"{k} x{v / steps:g}" for k, v in result.host_syncs.items())
        lines.append(f"Host syncs per forward: {found}.")
    else:
        lines.append("Host syncs per forward: none (no item / nonzero / masked_select / unique).")
    return "\n".join(lines)
