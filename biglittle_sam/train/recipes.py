"""Training recipes as files: YAML, TOML or JSON holding settings fields, checked against the
settings dataclasses.

A recipe names fields of the task's settings (``DistillSettings`` or ``FinetuneSettings``) at the
top level, and ``TrainSettings`` fields under ``train``; every field left out keeps its default::

    student: bl_b
    keep_ratios: [0.1, 0.25, 0.5, 1.0]
    student_overrides: {little_dim: 192}    # a mapping, or a list of [key, value] pairs
    train:
      steps: 20000
      lr: 1.0e-3

Command-line flags override the file. Each value is validated by pydantic against the field's type
hint (JSON rules, strict: ``1`` is a valid float, ``"1"`` is not an int), so an unknown key or a
wrong type fails before anything runs, naming the key and the expected type. The resolved settings
of a run are written to ``<out_dir>/settings.json`` when it ends (finished, stopped or failed after
it started), a recipe that runs it again.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import typing
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, TypeVar, Union

from ..fileio import atomic_write_json
from .settings import TrainSettings, settings_to_dict

__all__ = [
    "RECIPE_SUFFIXES",
    "RecipeError",
    "read_recipe",
    "check_recipe",
    "load_recipe",
    "merge_settings",
    "write_settings",
]

PathLike = Union[str, os.PathLike]
S = TypeVar("S")

RECIPE_SUFFIXES = (".yaml", ".yml", ".toml", ".json")

# Fields typed Tuple[Tuple[str, Any], ...] (config overrides): a recipe may give them as a mapping.
_PAIRS = typing.Tuple[typing.Tuple[str, Any], ...]


class RecipeError(ValueError):
    """A recipe file that cannot be read, or holds an unknown key or a value of the wrong type."""


def read_recipe(path: PathLike) -> Dict[str, Any]:
    """The mapping in a ``.yaml`` / ``.yml``, ``.toml`` or ``.json`` file (not yet checked).

    Raises:
      RecipeError: a missing file, another suffix, a syntax error, or a top level that is not a
        mapping.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in RECIPE_SUFFIXES:
        raise RecipeError(f"--config {path}: expected a {', '.join(RECIPE_SUFFIXES)} file")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise RecipeError(f"--config {path}: cannot be read ({e.strerror or e})") from None
    try:
        if suffix == ".toml":
            if sys.version_info >= (3, 11):
                import tomllib
            else:  # pragma: no cover - Python < 3.11
                import tomli as tomllib
            data = tomllib.loads(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except ValueError as e:  # json, tomllib and (below) yaml syntax errors
        raise RecipeError(f"--config {path}: not valid {suffix[1:].upper()}: {e}") from None
    except Exception as e:  # yaml.YAMLError is no ValueError
        raise RecipeError(f"--config {path}: not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RecipeError(
            f"--config {path}: expected a mapping of settings fields at the top level, "
            f"got {type(data).__name__}"
        )
    return data


def _type_text(tp: Any) -> str:
    return tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")


def _as_tuples(value: Any) -> Any:
    """Lists (from YAML / JSON) as tuples, at every depth, as the frozen settings hold them."""
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuples(v) for v in value)
    return value


def _check_value(key: str, tp: Any, value: Any, where: str) -> Any:
    from pydantic import TypeAdapter, ValidationError

    if tp == _PAIRS and isinstance(value, dict):
        value = [[str(k), v] for k, v in value.items()]
    try:
        checked = TypeAdapter(tp).validate_json(json.dumps(value), strict=True)
    except (ValidationError, TypeError, ValueError):
        expected = _type_text(tp) + (" or a mapping" if tp == _PAIRS else "")
        raise RecipeError(
            f"{where}: '{key}' must be {expected}, got {value!r} ({type(value).__name__})"
        ) from None
    return _as_tuples(checked)


def check_recipe(
    data: Mapping[str, Any], cls: type, where: str, prefix: str = ""
) -> Dict[str, Any]:
    """``data`` checked against the fields of the dataclass ``cls``; values of nested dataclass
    fields (``train``) come back as checked dicts, lists as tuples.

    Raises:
      RecipeError: naming the key (``train.steps``) and the expected fields or type.
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    out: Dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if key not in fields:
            raise RecipeError(
                f"{where}: unknown key '{name}'; {cls.__name__} has: {', '.join(sorted(fields))}"
            )
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise RecipeError(
                    f"{where}: '{name}' must be a mapping of {tp.__name__} fields, got {value!r}"
                )
            out[key] = check_recipe(value, tp, where, prefix=f"{name}.")
        else:
            out[key] = _check_value(name, tp, value, where)
    return out


def load_recipe(path: PathLike, cls: type) -> Dict[str, Any]:
    """:func:`read_recipe` then :func:`check_recipe` against ``cls``."""
    return check_recipe(read_recipe(path), cls, f"--config {path}")


def merge_settings(
    cls: Callable[..., S],
    recipe: Mapping[str, Any],
    flags: Mapping[str, Any],
    train_flags: Callable[[TrainSettings], TrainSettings],
) -> S:
    """Settings from defaults, then the recipe, then the flags given.

    Arguments:
      cls: the task's settings dataclass; its ``train`` field holds ``TrainSettings``.
      recipe: :func:`load_recipe`'s result (``{}`` without a file).
      flags: the task fields given as flags.
      train_flags: applies the train flags given to a ``TrainSettings``.

    The ``train`` part starts from ``cls``'s own train defaults (distillation's lr differs from
    fine-tuning's), not from ``TrainSettings()``.
    """
    top = {k: v for k, v in recipe.items() if k != "train"}
    top.update(flags)
    settings = cls(**top)
    train = dataclasses.replace(settings.train, **recipe.get("train", {}))  # type: ignore
    return dataclasses.replace(settings, train=train_flags(train))  # type: ignore


def write_settings(settings: Any) -> Optional[Path]:
    """Write ``settings`` to ``<settings.train.out_dir>/settings.json`` (atomically; rank 0 only
    under torchrun) when that folder exists: a run that stopped at its checks made none.

    Returns the path, or None where nothing was written.
    """
    out_dir = Path(settings.train.out_dir)
    if int(os.environ.get("RANK", "0")) != 0 or not out_dir.is_dir():
        return None
    return atomic_write_json(
        Path(settings.train.out_dir) / "settings.json", settings_to_dict(settings)
    )
