"""Which parts of a SAM model train: E-blocks and routers, the encoder, the decoder, or everything.

A ``parts`` string is a comma-separated union of:

- ``little``: the E-blocks (LITTLE blocks, with their LayerScale gamma), the routers and the
  global-context modules (``global_context``);
- ``router``: the routers alone;
- ``encoder``: the whole image encoder (P-blocks, E-blocks, routers, embeddings, neck);
- ``decoder``: the mask decoder;
- ``prompt``: the prompt encoder;
- ``all``: every parameter.

Everything else is frozen (``requires_grad = False``), so the optimizer, DDP and the gradient clip
see only what trains.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Tuple

from torch import nn

__all__ = ["PARTS", "parse_parts", "select_trainable", "trainable_summary"]

_SELECTORS: Dict[str, Callable[[str], bool]] = {
    "little": lambda name: any(s in name for s in (".little.", ".router.", ".context.")),
    "router": lambda name: ".router." in name,
    "encoder": lambda name: name.startswith("image_encoder."),
    "decoder": lambda name: name.startswith("mask_decoder."),
    "prompt": lambda name: name.startswith("prompt_encoder."),
    "all": lambda name: True,
}
PARTS = tuple(_SELECTORS)


def parse_parts(parts: str) -> Tuple[str, ...]:
    """``"little,decoder"`` -> ``("little", "decoder")``; ValueError naming the known parts."""
    names = tuple(p.strip() for p in str(parts).split(",") if p.strip())
    unknown = [p for p in names if p not in _SELECTORS]
    if unknown or not names:
        raise ValueError(
            f"unknown trainable parts {unknown or [parts]}; expected a comma-separated subset of "
            f"{', '.join(PARTS)} (for example 'little' or 'little,decoder')"
        )
    return names


def select_trainable(model: nn.Module, parts: str) -> List[str]:
    """Freeze every parameter of ``model`` except those ``parts`` selects; return their names.

    Raises:
      ValueError: when the selection is empty, for example ``little`` on a plain SAM model, which
        has no E-blocks or routers.
    """
    chosen = parse_parts(parts)
    names = []
    for name, p in model.named_parameters():
        p.requires_grad_(any(_SELECTORS[c](name) for c in chosen))
        if p.requires_grad:
            names.append(name)
    if not names:
        hint = ""
        if any(c in ("little", "router") for c in chosen):
            hint = " (a plain SAM model has no E-blocks or routers: it is not big.LITTLE)"
        raise ValueError(
            f"trainable parts '{parts}' select no parameter of this model{hint}; choose from "
            f"{', '.join(PARTS)}"
        )
    return names


def trainable_summary(model: nn.Module) -> Dict[str, int]:
    """Parameter counts: ``trainable``, ``frozen`` and ``total``."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "frozen": total - trainable, "total": total}
