"""Model specs on the command line, and building the models they name.

A spec is ``NAME[=CHECKPOINT][@KEEP_RATIO]``:

- ``vit_b=sam_vit_b_01ec64.pth``: SAM ViT-B from an official checkpoint;
- ``bl_b=bl_b.pth@0.25``: a big.LITTLE checkpoint at keep ratio 0.25;
- ``bl_b=sam_vit_b_01ec64.pth@0.5``: big.LITTLE inheriting from an official SAM checkpoint (not
  distilled; detected from the file's keys);
- ``bl_tiny@0.5`` or ``vit_tiny``: random weights (seeded), for smoke tests.

Specs with the same name and checkpoint share one model in memory; each sets its keep ratio before
it encodes an image.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

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

SPEC_FORM = (
    "NAME[=CHECKPOINT][@KEEP_RATIO], for example 'vit_b=sam_vit_b_01ec64.pth', "
    "'bl_b=bl_b.pth@0.25', or 'bl_tiny@0.5' (random weights)"
)
# The keep ratio is the last "@number"; any other "@" belongs to the checkpoint path.
_SPEC = re.compile(
    r"^(?P<name>[A-Za-z][A-Za-z0-9_]*)(?:=(?P<path>.+?))?(?:@(?P<ratio>[0-9.eE+-]*))?$"
)


class ModelSpecError(ValueError):
    """A ``--model`` spec that does not parse or names something that cannot be built."""


@dataclass(frozen=True)
class ModelSpec:
    """A parsed ``--model`` spec."""

    name: str
    checkpoint: Optional[str]
    keep_ratio: Optional[float]
    text: str

    @property
    def is_big_little(self) -> bool:
        return self.name.startswith("bl_")


def parse_model_spec(text: str) -> ModelSpec:
    """Parse ``NAME[=CHECKPOINT][@KEEP_RATIO]``.

    Raises:
      ModelSpecError: showing the expected form, when the text does not parse, the name is not in
        the registry, or the keep ratio is not a number in (0, 1].
    """
    from ..build_sam import sam_model_registry
    from ..config import validate_keep_ratio

    spec = text.strip()
    m = _SPEC.match(spec)
    if not m or (m.group("path") is not None and not m.group("path").strip()):
        raise ModelSpecError(f"cannot parse model spec {text!r}; expected {SPEC_FORM}")
    name = m.group("name")
    if name not in sam_model_registry:
        known = ", ".join(sorted(sam_model_registry))
        raise ModelSpecError(
            f"model spec {text!r}: unknown model {name!r}; known models: {known}. "
            f"Expected {SPEC_FORM}"
        )
    ratio: Optional[float] = None
    if m.group("ratio") is not None:
        try:
            ratio = validate_keep_ratio(float(m.group("ratio")))
        except ValueError:
            raise ModelSpecError(
                f"model spec {text!r}: keep ratio {m.group('ratio')!r} is not a number in (0, 1]; "
                f"expected {SPEC_FORM}"
            ) from None
        if not name.startswith("bl_") and ratio != 1.0:
            raise ModelSpecError(
                f"model spec {text!r}: {name} is plain SAM and has no keep ratio below 1; "
                "keep ratios apply to big.LITTLE models (bl_*)"
            )
    return ModelSpec(name=name, checkpoint=m.group("path"), keep_ratio=ratio, text=text)


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
    from ..flops import encoder_gmacs

    try:
        return float(encoder_gmacs(sam, keep_ratio=keep_ratio))
    except TypeError:  # an encoder type the analytic counter does not know
        return None


def _uses_sam_checkpoint(path: str) -> bool:
    """Whether a file for a bl_* model is an official SAM checkpoint (to inherit from)."""
    from ..checkpoint import guess_model_name, read_checkpoint, split_checkpoint

    state, _ = split_checkpoint(read_checkpoint(path), path)
    looks_like = guess_model_name(state)
    if looks_like is not None:
        return not looks_like.startswith("bl_")
    return not any(".little." in k for k in state)


def _build(spec: ModelSpec, device: torch.device, seed: int) -> torch.nn.Module:
    from ..build_sam import sam_model_registry
    from ..checkpoint import CheckpointError

    builder = sam_model_registry[spec.name]
    kwargs: Dict[str, Any] = {}
    if spec.checkpoint is not None:
        path = Path(spec.checkpoint)
        if not path.is_file():
            raise ModelSpecError(f"model spec {spec.text!r}: checkpoint {path} not found")
        if spec.is_big_little and _uses_sam_checkpoint(str(path)):
            kwargs["sam_checkpoint"] = str(path)
        else:
            kwargs["checkpoint"] = str(path)
    # Weights the checkpoint does not hold (all of them for a bare NAME; the LITTLE blocks and
    # routers when inheriting from SAM) are drawn from a fixed seed: every process builds the
    # same model.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            sam = builder(**kwargs)
        except CheckpointError:
            raise
        except (TypeError, ValueError) as e:
            raise ModelSpecError(f"model spec {spec.text!r}: {e}") from None
    return sam.to(device).eval()


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


def build_eval_models(specs: Sequence[str], device: torch.device, seed: int = 0) -> List[EvalModel]:
    """Parse and build every ``--model`` spec, sharing one module per (name, checkpoint).

    Raises:
      ModelSpecError: for a spec that does not parse or cannot be built.
      CheckpointError: for a checkpoint file that does not fit its model.
    """
    from ..build_sam import get_keep_ratio, model_config

    if not specs:
        raise ModelSpecError(f"no model given; pass --model {SPEC_FORM}")
    parsed = [parse_model_spec(s) for s in specs]
    modules: Dict[Tuple[str, Optional[str]], torch.nn.Module] = {}
    ratios = []
    for spec in parsed:
        key = (spec.name, spec.checkpoint)
        if key not in modules:
            modules[key] = _build(spec, device, seed)
        sam = modules[key]
        ratios.append(spec.keep_ratio if spec.keep_ratio is not None else get_keep_ratio(sam))
    models = []
    for spec, ratio, label in zip(parsed, ratios, _labels(parsed, ratios)):
        sam = modules[(spec.name, spec.checkpoint)]
        config = model_config(sam)
        big_little = spec.is_big_little
        models.append(
            EvalModel(
                label=label,
                spec=spec,
                predictor=SamMaskPredictor(sam, keep_ratio=ratio if big_little else None),
                keep_ratio=float(ratio),
                img_size=int(sam.image_encoder.img_size),
                config_name=str(config.name),
                gmacs=encoder_gmacs_or_none(sam, ratio if big_little else None),
            )
        )
    return models
