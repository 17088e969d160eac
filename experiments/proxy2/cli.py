"""The second proxy benchmark (SAM's geometry, objects sized in tokens, dense students at matched
cost). Run from a clone (``make proxy-benchmark-v2`` runs the first line)::

    python -m experiments.proxy2 --out-dir outputs/proxy_v2                 # the table (test)
    python -m experiments.proxy2 --split dev --out-dir outputs/proxy_v2_dev # choosing recipes
    python -m experiments.proxy2 --device cuda                              # the same on a GPU

Writes ``proxy_v2.json`` and, on the test split, ``proxy_v2.md`` and ``proxy_v2.png``. Every
flag defaults to ``experiments.proxy2.ProxyV2Settings``.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Dict, Optional, Sequence

from biglittle_sam.runtime.cli import add_settings_flags
from biglittle_sam.train.cli import parse_overrides

from ..runs import run_benchmark_cli
from .pipeline import run_proxy_v2
from .settings import ProxyV2Settings

PROG = "python -m experiments.proxy2"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Proxy benchmark v2: big.LITTLE against dense students of the same cost.",
    )
    flags = [f.name for f in dataclasses.fields(ProxyV2Settings)]
    hidden = ("command",)
    return add_settings_flags(parser, ProxyV2Settings, only=[f for f in flags if f not in hidden])


def _overrides(changes: Dict[str, Any]) -> None:
    """``--teacher-override KEY=VALUE`` flags as (key, value) pairs."""
    try:
        changes["teacher_overrides"] = parse_overrides(changes.get("teacher_overrides"))
    except ValueError as error:
        raise ValueError(str(error).replace("--override", "--teacher-override")) from None


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    return run_benchmark_cli(
        build_parser(), ProxyV2Settings, run_proxy_v2, PROG, argv, prepare=_overrides
    )


if __name__ == "__main__":
    main()
