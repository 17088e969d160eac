"""Building the models an evaluation compares, from model specs.

A spec is ``NAME[=CHECKPOINT][@KEEP_RATIO]`` (``biglittle_sam.model_spec``). Specs with the same
name and checkpoint share one model in memory; each sets its keep ratio before it encodes an image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from ..build_sam import build_model_from_spec, get_keep_ratio, model_config
from ..flops import encoder_gmacs
from ..model_spec import SPEC_FORM, ModelSpec, ModelSpecError, parse_model_spec
from ..quantize import quantize_encoder_int8
from .predictor import MaskPredictor, SamMaskPredictor

__all__ = [
    "SPEC_FORM",
    "ModelSpec",
    "ModelSpecError",
    "EvalModel",
    "parse_model_spec",
    "build_eval_models",
    "encoder_gmacs_or_none",
]


@dataclass
class EvalModel:
    """One row of the results table: a model at one keep ratio, ready to predict."""

    label: str
    spec: ModelSpec
    predictor: MaskPredictor  # a SamMaskPredictor, or an oracle in the tests
    keep_ratio: float
    img_size: int
    config_name: str
    gmacs: Optional[float]

    def describe(self) -> Dict[str, Any]:
        return {
            "label": self.label,
            "name": self.spec.name,
            "config": self.config_name,
            "checkpoint": self.spec.checkpoint,
            "keep_ratio": self.keep_ratio,
            "img_size": self.img_size,
            "gmacs": self.gmacs,
        }


def encoder_gmacs_or_none(sam: torch.nn.Module, keep_ratio: Optional[float]) -> Optional[float]:
    """Analytic encoder GMACs (``biglittle_sam.flops``), or None for an encoder it cannot count."""
    try:
        return float(encoder_gmacs(sam, keep_ratio=keep_ratio))
    except TypeError:  # an encoder type the analytic counter does not know
        return None


def _labels(specs: Sequence[ModelSpec], ratios: Sequence[float]) -> List[str]:
    base = [f"{s.name}@{r:g}" if s.is_big_little else s.name for s, r in zip(specs, ratios)]
    labels = []
    for i, (label, spec) in enumerate(zip(base, specs)):
        if base.count(label) > 1 and spec.checkpoint:
            label = f"{label} ({Path(spec.checkpoint).stem})"
        labels.append(label)
    seen: Dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label} #{seen[label]}")
    return out


def build_eval_models(
    specs: Sequence[str], device: torch.device, seed: int = 0, int8: bool = False
) -> List[EvalModel]:
    """Parse and build every ``--model`` spec, sharing one module per (name, checkpoint).

    With ``int8``, every image encoder runs its Linear layers in dynamic int8
    (:func:`biglittle_sam.quantize.quantize_encoder_int8`, CPU only) and each label ends in
    ``" int8"``.

    Raises:
      ModelSpecError: for a spec that does not parse or cannot be built.
      CheckpointError: for a checkpoint file that does not fit its model.
      ValueError: ``int8`` on a device other than the CPU.
    """
    if int8 and torch.device(device).type != "cpu":
        raise ValueError(
            f"--int8 runs on the CPU only, but the device is {device}; pass --device cpu"
        )
    if not specs:
        raise ModelSpecError(f"no model given; pass --model {SPEC_FORM}")
    parsed = [parse_model_spec(s) for s in specs]
    modules: Dict[Tuple[str, Optional[str]], torch.nn.Module] = {}
    ratios = []
    for spec in parsed:
        key = (spec.name, spec.checkpoint)
        if key not in modules:
            modules[key] = build_model_from_spec(spec, seed).to(device).eval()
            if int8:
                modules[key] = quantize_encoder_int8(modules[key], inplace=True)
        sam = modules[key]
        ratios.append(spec.keep_ratio if spec.keep_ratio is not None else get_keep_ratio(sam))
    models = []
    for spec, ratio, label in zip(parsed, ratios, _labels(parsed, ratios)):
        sam = modules[(spec.name, spec.checkpoint)]
        config = model_config(sam)
        big_little = spec.is_big_little
        models.append(
            EvalModel(
                label=f"{label} int8" if int8 else label,
                spec=spec,
                predictor=SamMaskPredictor(sam, keep_ratio=ratio if big_little else None),
                keep_ratio=float(ratio),
                img_size=int(sam.image_encoder.img_size),
                config_name=str(config.name),
                gmacs=encoder_gmacs_or_none(sam, ratio if big_little else None),
            )
        )
    return models
