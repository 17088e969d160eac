"""Command-line plumbing shared by every tool: flags given, defaults shown in ``--help``, old
flag spellings, and one exit-status rule (2 for usage errors, 1 for runtime errors).

It imports nothing but the standard library, so the lightest tools (convert, profile, export) can
use it without pulling in the training stack.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any, Callable, Dict, Mapping, Sequence, TypeVar

__all__ = [
    "RUNTIME_ERRORS",
    "USAGE_ERRORS",
    "add_old_spelling",
    "describe_defaults",
    "given",
    "run_cli",
    "settings_defaults",
]

T = TypeVar("T")


def given(args: argparse.Namespace, names: Sequence[str]) -> Dict[str, Any]:
    """The flags among ``names`` that were given (not None)."""
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def _default_text(value: Any) -> str:
    if value is None or value == ():
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (tuple, list)):
        return " ".join(_default_text(v) for v in value)
    return str(value)


def settings_defaults(settings: Any) -> Dict[str, Any]:
    """A settings dataclass's field values, its ``train`` fields included: the defaults that
    :func:`describe_defaults` shows."""
    out = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}
    train = out.pop("train", None)
    if dataclasses.is_dataclass(train):
        out.update({f.name: getattr(train, f.name) for f in dataclasses.fields(train)})
    return out


def describe_defaults(
    parser: argparse.ArgumentParser, defaults: Mapping[str, Any]
) -> argparse.ArgumentParser:
    """Append ``(default: X)`` to the help of every optional flag whose destination is in
    ``defaults`` and whose help does not already name its default (or say it is required).

    The flags default to None so that only the flags given are passed on; this shows the
    library's real default (``defaults``: the settings dataclass's values) in ``--help``.
    """
    for action in parser._actions:
        text = action.help
        if action.dest not in defaults or action.required or text in (None, argparse.SUPPRESS):
            continue
        if "default" not in text.lower() and "required" not in text.lower():
            value = _default_text(defaults[action.dest]).replace("%", "%%")
            action.help = f"{text} (default: {value})"
    return parser


def add_old_spelling(parser: Any, flag: str, dest: str) -> None:
    """Accept ``flag``, an older spelling of the flag stored in ``dest``, without listing it in
    ``--help`` (``parser``: a parser or an argument group)."""
    parser.add_argument(flag, dest=dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS)


# Exit statuses of every tool: 2 when the command line, or a file or setting it names, is unusable
# (argparse's own status for a bad flag); 1 when the work failed (a full disk, a missing optional
# package, images that could not be processed).
USAGE_ERRORS = (ValueError, FileNotFoundError, FileExistsError)
RUNTIME_ERRORS = (OSError, ImportError)


def run_cli(work: Callable[[], T]) -> T:
    """Run ``work``; a user error (bad path, checkpoint, cache, setting: :data:`USAGE_ERRORS`)
    exits with status 2 and a runtime one (:data:`RUNTIME_ERRORS`) with status 1, each with one
    ``error:`` line instead of a traceback."""
    try:
        return work()
    except USAGE_ERRORS as e:  # CheckpointError, DatasetError, RecipeError are ValueErrors
        print(f"error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    except RUNTIME_ERRORS as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
