"""The demo server's settings: what it serves, where, and what it keeps per user.

``biglittle-sam-demo`` builds its command line from these dataclasses
(:func:`biglittle_sam.runtime.cli.add_settings_flags`), so each flag's name, default and help are
written here once.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Callable, List, Optional

from ..runtime.cli import flag
from .session import CACHE_ENTRIES

__all__ = ["Bounds", "ServeSettings", "positive"]

_MODELS = "models (the built-in toy models are always offered)"
_SERVER = "server"
_BOUNDS = "bounds on what the server keeps per user (docs/demo.md)"


def positive(kind: Callable[[str], float]) -> Callable[[str], float]:
    """An argparse type: a positive ``kind`` (int or float), else a usage error naming it."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
        return value

    return parse


@dataclass(frozen=True)
class ServeSettings:
    """The models the demo serves and the address it serves them on."""

    checkpoint: Optional[List[str]] = flag(
        None,
        "a big.LITTLE (or plain SAM) checkpoint to serve; repeatable. NAME labels it in the model "
        "menu; a registry name (bl_b, vit_b, ...) also says which model a bare state dict is",
        action="append",
        metavar="[NAME=]PATH",
        group=_MODELS,
    )
    sam_checkpoint: Optional[List[str]] = flag(
        None,
        "an official SAM checkpoint (vit_b / vit_l / vit_h, recognised from the weights); the "
        "plain SAM to compare with; repeatable",
        action="append",
        metavar="[NAME=]PATH",
        group=_MODELS,
    )
    no_builtin: bool = flag(False, "do not offer the built-in toy models", group=_MODELS)
    training_free: bool = flag(
        False,
        "also offer every plain SAM in the training-free mode (SAM's weights, no training; its "
        "keep ratio on the slider)",
        group=_MODELS,
    )
    device: str = flag("auto", "auto (CUDA when available), cpu, cuda or cuda:N", group=_MODELS)
    threads: Optional[int] = flag(
        None, "torch CPU threads (default: torch's choice)", group=_MODELS
    )
    host: str = flag("127.0.0.1", "address to bind", group=_SERVER)
    port: Optional[int] = flag(None, "port (default: Gradio's, 7860)", group=_SERVER)
    share: bool = flag(False, "also open a public gradio.live link", group=_SERVER)


def _bound(default: float, kind: Callable[[str], float], metavar: str, text: str) -> Any:
    """A field of :class:`Bounds`: a positive number, in the bounds' flag group."""
    return flag(default, text, type=positive(kind), metavar=metavar, group=_BOUNDS)


@dataclass(frozen=True)
class Bounds:
    """What the server keeps per user, and for how long.

    Attributes:
      max_sessions: sessions whose state is kept in memory; beyond it the least recently used is
        dropped (Gradio's ``state_session_capacity``).
      session_ttl: seconds a session's state lives after its last action (``gr.State``'s
        ``time_to_live``); then its encodings, masks, downloads and uploads are deleted.
      file_max_age: seconds Gradio keeps uploaded and served files; checked every
        ``min(file_max_age, 600)`` s (``gr.Blocks``' ``delete_cache``).
      encodings_per_session: encoder outputs cached per session (model x keep ratio).
    """

    max_sessions: int = _bound(
        64, int, "N", "sessions kept in memory; beyond N the least recently used goes"
    )
    session_ttl: float = _bound(
        1800.0, float, "SECONDS", "an idle session is deleted with its files after this"
    )
    file_max_age: int = _bound(
        3600, int, "SECONDS", "uploaded and served files older than this are deleted"
    )
    encodings_per_session: int = _bound(
        CACHE_ENTRIES, int, "N", "encoder outputs cached per session (model x ratio)"
    )

    def __post_init__(self) -> None:
        for name in ("max_sessions", "session_ttl", "file_max_age", "encodings_per_session"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"demo bound {name} must be positive, got {value!r}")
