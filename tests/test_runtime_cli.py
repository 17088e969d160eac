"""Flags built from a settings dataclass (``runtime.cli.add_settings_flags``)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Optional, Tuple

import pytest

from biglittle_sam.runtime.cli import add_settings_flags, field_comments, flag, settings_kwargs


@dataclass(frozen=True)
class _Settings:
    limit: Optional[int] = None  # evaluate only the first N images
    clicks: Tuple[int, ...] = (1, 3, 5)  # click counts
    # a comment line of its own belongs to no field
    strict: bool = False  # stop at the first bad image
    progress: bool = True  # progress bar
    models: Tuple[str, ...] = flag(
        (), "a model, repeatable", name="--model", action="append", metavar="SPEC", group="models"
    )
    protocol: str = flag("evit", "the protocol", choices=("evit", "edgesam"), old=("--proto",))
    internal: int = flag(3, cli=False)


def _parser() -> argparse.ArgumentParser:
    return add_settings_flags(argparse.ArgumentParser(prog="x"), _Settings)


def test_help_comes_from_comments_and_flag_with_defaults() -> None:
    text = _parser().format_help()
    assert "evaluate only the first N images (default: none)" in text
    assert "click counts (default: 1 3 5)" in text
    assert "stop at the first bad image (default: off)" in text
    assert "--progress, --no-progress" in text and "progress bar (default: on)" in text
    assert "--model SPEC" in text and "a model, repeatable (default: none)" in text
    assert "the protocol (default: evit)" in text and "{evit,edgesam}" in text
    assert "models:" in text  # the group
    assert "--internal" not in text and "--proto " not in text and "block" not in text


def test_only_given_flags_become_settings() -> None:
    parser = _parser()
    args = parser.parse_args(["--limit", "3", "--clicks", "1", "2", "--model", "a", "--model", "b"])
    kwargs = settings_kwargs(args, _Settings)
    assert kwargs == {"limit": 3, "clicks": (1, 2), "models": ("a", "b")}
    assert _Settings(**kwargs).progress is True
    args = parser.parse_args(["--no-progress", "--strict", "--proto", "edgesam"])
    assert settings_kwargs(args, _Settings) == {
        "strict": True,
        "progress": False,
        "protocol": "edgesam",
    }
    assert settings_kwargs(parser.parse_args([]), _Settings) == {}


def test_bad_values_are_refused_by_argparse() -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["--protocol", "other"])
    with pytest.raises(SystemExit):
        _parser().parse_args(["--limit", "three"])


def test_field_comments_reads_trailing_comments_only() -> None:
    comments = field_comments(_Settings)
    assert comments["limit"] == "evaluate only the first N images"
    assert "strict" in comments and "models" not in comments
