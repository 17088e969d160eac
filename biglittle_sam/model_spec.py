"""Naming a model on a command line: one parser for every tool.

A model spec is ``NAME[=CHECKPOINT][@KEEP_RATIO]``:

- ``vit_b=sam_vit_b_01ec64.pth``: SAM ViT-B from an official checkpoint;
- ``bl_b=bl_b.pth@0.25``: a big.LITTLE checkpoint at keep ratio 0.25;
- ``bl_b=sam_vit_b_01ec64.pth@0.5``: big.LITTLE inheriting from an official SAM checkpoint (not
  distilled; ``build_sam.build_model_from_spec`` detects it from the file);
- ``bl_tiny@0.5`` or ``vit_tiny``: random weights (seeded), for smoke tests.

Tools that take the parts as separate flags (``--model NAME --checkpoint PATH --keep-ratio R``)
combine them with :func:`spec_with`, so the same checks and messages apply. The demo's
``--checkpoint [NAME=]PATH`` is split by :func:`split_named_path`.

This module only parses: building the model is ``build_sam.build_model_from_spec``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple, Union

from .config import BIGLITTLE_CONFIGS, SAM_CONFIGS, validate_keep_ratio

__all__ = [
    "MODEL_NAMES",
    "SPEC_FORM",
    "ModelSpec",
    "ModelSpecError",
    "parse_model_spec",
    "model_spec_arg",
    "spec_with",
    "split_named_path",
]

PathLike = Union[str, os.PathLike]
# The registry's names (build_sam.sam_model_registry has exactly these keys).
MODEL_NAMES = ("default", *SAM_CONFIGS, *BIGLITTLE_CONFIGS)
SPEC_FORM = (
    "NAME[=CHECKPOINT][@KEEP_RATIO], for example 'vit_b=sam_vit_b_01ec64.pth', "
    "'bl_b=bl_b.pth@0.25', or 'bl_tiny@0.5' (random weights)"
)
# The keep ratio is the last "@number"; any other "@" belongs to the checkpoint path.
_SPEC = re.compile(
    r"^(?P<name>[A-Za-z][A-Za-z0-9_]*)(?:=(?P<path>.+?))?(?:@(?P<ratio>[0-9.eE+-]*))?$"
)


class ModelSpecError(ValueError):
    """A model spec that does not parse or names something that cannot be built."""


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec.

    Attributes:
      name: a registry name (``vit_b``, ``bl_b``...).
      checkpoint: the file after ``=``, or None for random weights.
      keep_ratio: the ratio after ``@``, or None for the model's own.
      text: the spec as the user wrote it, for messages.
    """

    name: str
    checkpoint: Optional[str]
    keep_ratio: Optional[float]
    text: str

    @property
    def is_big_little(self) -> bool:
        return self.name.startswith("bl_")


def _check_name(name: str, text: str) -> None:
    if name not in MODEL_NAMES:
        known = ", ".join(sorted(MODEL_NAMES))
        raise ModelSpecError(
            f"model spec {text!r}: unknown model {name!r}; known models: {known}. "
            f"Expected {SPEC_FORM}"
        )


def _check_ratio(name: str, ratio: Union[str, float], text: str) -> float:
    """A spec's keep ratio as a float: in (0, 1], and 1 for plain SAM (ModelSpecError if not)."""
    try:
        value = validate_keep_ratio(float(ratio))
    except ValueError:
        raise ModelSpecError(
            f"model spec {text!r}: keep ratio {str(ratio)!r} is not a number in (0, 1]; "
            f"expected {SPEC_FORM}"
        ) from None
    try:
        return validate_keep_ratio(value, plain_sam=None if name.startswith("bl_") else name)
    except ValueError as e:
        raise ModelSpecError(f"model spec {text!r}: {e}") from None


def parse_model_spec(text: str) -> ModelSpec:
    """Parse ``NAME[=CHECKPOINT][@KEEP_RATIO]``.

    Raises:
      ModelSpecError: showing the expected form, when the text does not parse, the name is not in
        the registry, or the keep ratio is not a number in (0, 1] (or below 1 for plain SAM).
    """
    spec = text.strip()
    m = _SPEC.match(spec)
    if not m or (m.group("path") is not None and not m.group("path").strip()):
        raise ModelSpecError(f"cannot parse model spec {text!r}; expected {SPEC_FORM}")
    name = m.group("name")
    _check_name(name, text)
    ratio = None if m.group("ratio") is None else _check_ratio(name, m.group("ratio"), text)
    return ModelSpec(name=name, checkpoint=m.group("path"), keep_ratio=ratio, text=text)


def model_spec_arg(text: str) -> ModelSpec:
    """:func:`parse_model_spec` as an argparse ``type``: a bad spec is a usage error (exit 2)
    whose message shows the expected form."""
    try:
        return parse_model_spec(text)
    except ModelSpecError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def spec_with(
    spec: ModelSpec, checkpoint: Optional[PathLike] = None, keep_ratio: Optional[float] = None
) -> ModelSpec:
    """``spec`` with a checkpoint and keep ratio given as separate flags (``--checkpoint``,
    ``--keep-ratio``), checked like the spec's own parts.

    Raises:
      ModelSpecError: a part given both in the spec and as a flag, or a bad keep ratio.
    """
    if checkpoint is not None and spec.checkpoint is not None:
        raise ModelSpecError(
            f"model spec {spec.text!r} names its checkpoint already; drop --checkpoint {checkpoint}"
        )
    if keep_ratio is not None and spec.keep_ratio is not None:
        raise ModelSpecError(
            f"model spec {spec.text!r} sets its keep ratio already; drop --keep-ratio {keep_ratio}"
        )
    return dataclasses.replace(
        spec,
        checkpoint=spec.checkpoint if checkpoint is None else str(checkpoint),
        keep_ratio=(
            spec.keep_ratio
            if keep_ratio is None
            else _check_ratio(spec.name, keep_ratio, spec.text)
        ),
    )


def split_named_path(text: PathLike) -> Tuple[Optional[str], Path]:
    """``NAME=PATH`` or ``PATH`` -> (NAME or None, path). An existing file named ``a=b`` is a path.

    NAME is not checked here: the demo takes any menu label, ``build_sam.load_sam`` a registry
    name.
    """
    raw = os.fspath(text)
    name, sep, path = raw.partition("=")
    if sep and name and path and not Path(raw).exists():
        return name.strip(), Path(path)
    return None, Path(raw)
