"""The training flags of ``distill`` and ``finetune`` and their recipe files; the plumbing every
tool shares (flags from a settings dataclass, defaults in ``--help``, exit statuses) is in
``runtime/cli.py`` and re-exported here.

Every flag comes from a settings field (its name, type, default, and its comment as help), defaults
to None, and only the flags a user gives are passed on, so the dataclass defaults
(``TrainSettings``, ``DistillSettings``, ``FinetuneSettings``) stay the only defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..runtime.cli import (
    RUNTIME_ERRORS,
    USAGE_ERRORS,
    add_old_spelling,
    add_settings_flags,
    describe_defaults,
    given,
    run_cli,
    settings_defaults,
    settings_kwargs,
)
from .recipes import load_recipe, merge_settings
from .settings import TrainSettings

__all__ = [
    "add_config_argument",
    "add_flag_groups",
    "add_task_arguments",
    "add_train_arguments",
    "task_settings_from_args",
    "train_settings_from_args",
    "parse_overrides",
    "given",
    "describe_defaults",
    "settings_defaults",
    "add_old_spelling",
    "run_cli",
    "USAGE_ERRORS",
    "RUNTIME_ERRORS",
]

# TrainSettings' fields in the "optimization" group of --help, in their order there; the others
# are in the "run" group, in field order.
OPTIMIZATION_FIELDS = (
    "steps", "batch_size", "grad_accum", "lr", "min_lr_ratio", "warmup_steps", "weight_decay",
    "betas", "clip_grad", "amp", "seed", "ema_decay",
)  # fmt: skip


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    """``--config FILE``: a recipe of settings fields (``biglittle_sam.train.recipes``)."""
    parser.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="a recipe: settings fields in a .yaml, .toml or .json file (train fields under "
        "'train'); flags given override it (default: none)",
    )


def add_flag_groups(
    parser: argparse.ArgumentParser,
    settings_cls: type,
    groups: Sequence[Tuple[str, Sequence[str]]],
    defaults: Optional[Any] = None,
) -> Dict[str, Any]:
    """One argument group per ``(title, field names)`` of ``groups``, with a flag per field of
    ``settings_cls`` (:func:`~biglittle_sam.runtime.cli.add_settings_flags`).

    Arguments:
      defaults: a ``settings_cls`` instance whose values ``--help`` shows (default: the
        dataclass's own defaults).

    Returns:
      The argument groups by title (a title the parser has already is that group, extended).
    """
    shown = settings_defaults(defaults) if defaults is not None else None
    existing = {g.title: g for g in parser._action_groups}
    out: Dict[str, Any] = {}
    for title, names in groups:
        group = existing.get(title) or parser.add_argument_group(title)
        existing[title] = out[title] = group
        add_settings_flags(group, settings_cls, only=names, defaults=shown)
    return out


def add_train_arguments(
    parser: argparse.ArgumentParser, defaults: Optional[TrainSettings] = None
) -> None:
    """The ``optimization`` and ``run`` argument groups (``TrainSettings``).

    Arguments:
      defaults: the train settings whose values ``--help`` shows (a task's own, such as
        ``DistillSettings().train``); default: ``TrainSettings()``.
    """
    run = [f.name for f in dataclasses.fields(TrainSettings) if f.name not in OPTIMIZATION_FIELDS]
    groups = (("optimization", OPTIMIZATION_FIELDS), ("run", run))
    add_flag_groups(parser, TrainSettings, groups, defaults)


def add_task_arguments(
    parser: argparse.ArgumentParser,
    settings_cls: type,
    groups: Sequence[Tuple[str, Sequence[str]]],
    defaults: Any,
) -> argparse.ArgumentParser:
    """A training tool's flags: ``--config``, the task's argument ``groups`` (fields of
    ``settings_cls``, see :func:`add_flag_groups`) and the train groups.

    Arguments:
      defaults: a ``settings_cls`` instance: its values, and its ``train`` values, are the
        defaults ``--help`` shows.
    """
    add_config_argument(parser)
    add_flag_groups(parser, settings_cls, groups, defaults)
    add_train_arguments(parser, defaults.train)
    return parser


def train_settings_from_args(args: argparse.Namespace, defaults: TrainSettings) -> TrainSettings:
    """``defaults`` with the train flags that were given."""
    return dataclasses.replace(defaults, **settings_kwargs(args, TrainSettings))


def task_settings_from_args(
    args: argparse.Namespace,
    settings_cls: type,
    required: Sequence[str] = (),
    overrides: Optional[str] = None,
) -> Any:
    """A task's settings (its train settings under ``train``): its defaults, then the ``--config``
    recipe, then the flags given.

    Arguments:
      required: fields that the flags or the recipe must give.
      overrides: the field of config overrides, given as ``--override KEY=VALUE`` flags
        (:func:`parse_overrides`).

    Raises:
      ValueError: a required field given nowhere, a bad ``--override``; RecipeError: a bad recipe.
    """
    changes = settings_kwargs(args, settings_cls, exclude=("train", overrides or ""))
    if overrides is not None and getattr(args, overrides, None):
        changes[overrides] = parse_overrides(getattr(args, overrides))
    recipe = load_recipe(args.config, settings_cls) if args.config else {}
    for name in required:
        if not changes.get(name) and not recipe.get(name):
            raise ValueError(f"--{name} is required (or '{name}' in the --config file)")
    return merge_settings(
        settings_cls, recipe, changes, lambda train: train_settings_from_args(args, train)
    )


def _value(text: str) -> Any:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text
    return tuple(value) if isinstance(value, list) else value


def parse_overrides(items: Optional[Sequence[str]]) -> Tuple[Tuple[str, Any], ...]:
    """``["embed_dim=128", "global_attn_indexes=[1,3]"]`` -> ``(("embed_dim", 128), ...)``.

    Values are read as JSON (numbers, booleans, lists become tuples), else kept as text.
    """
    out: List[Tuple[str, Any]] = []
    for item in items or ():
        if "=" not in item:
            raise ValueError(f"--override {item!r}: expected KEY=VALUE, e.g. embed_dim=128")
        key, text = item.split("=", 1)
        out.append((key.strip(), _value(text.strip())))
    return tuple(out)
