"""Command-line plumbing shared by every tool: flags given, defaults shown in ``--help``, old
flag spellings, and one exit-status rule (2 for usage errors, 1 for runtime errors).

It imports nothing but the standard library, so the lightest tools (convert, profile, export) can
use it without pulling in the training stack.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import sys
import typing
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, TypeVar

__all__ = [
    "RUNTIME_ERRORS",
    "USAGE_ERRORS",
    "FlagSpec",
    "add_old_spelling",
    "add_settings_flags",
    "field_comments",
    "flag",
    "overrides_flag",
    "settings_kwargs",
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


# --- Flags from a settings dataclass -------------------------------------------------------------
#
# A settings dataclass already holds each flag's name, type and default, and a comment that says
# what it is for. ``add_settings_flags`` builds the flags from it, so none of that is typed twice:
#
#     @dataclass(frozen=True)
#     class EvalSettings:
#         limit: Optional[int] = None  # evaluate only the first N images
#         models: Tuple[str, ...] = flag((), "a model to evaluate, repeatable", name="--model",
#                                         action="append", metavar="SPEC")
#
#     parser = argparse.ArgumentParser()
#     add_settings_flags(parser, EvalSettings)
#     settings = EvalSettings(**settings_kwargs(parser.parse_args(argv), EvalSettings))
#
# Help comes from the field's ``flag(help=...)`` or else from its trailing comment; the type from
# its annotation (``Optional[X]`` is X, ``Tuple[X, ...]`` takes one or more values, ``bool`` is a
# switch). Every flag defaults to None, so only the flags given are passed on and the dataclass's
# defaults stay the only defaults; ``--help`` shows them.

_CLI = "cli"


@dataclasses.dataclass(frozen=True)
class FlagSpec:
    """How one settings field appears on the command line (``argparse.add_argument`` words)."""

    help: Optional[str] = None  # None: the field's trailing comment
    name: Optional[str] = None  # None: --field-name
    aliases: Tuple[str, ...] = ()  # further spellings listed in --help (upstream names)
    old: Tuple[str, ...] = ()  # older spellings accepted but not listed
    group: Optional[str] = None  # argument group title; None: the group the call names
    choices: Optional[Sequence[Any]] = None
    metavar: Any = None
    type: Optional[Callable[[str], Any]] = None  # None: from the annotation
    action: Any = None  # an argparse action name or class; None: from the annotation
    nargs: Any = None  # None: from the annotation
    required: bool = False
    cli: bool = True  # False: a library-only field, no flag


def flag(default: Any = dataclasses.MISSING, help: Optional[str] = None, **spec: Any) -> Any:
    """A dataclass field with command-line details (:class:`FlagSpec` keywords)."""
    metadata = {_CLI: FlagSpec(help=help, **spec)}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def overrides_flag(help: str, name: str = "--override") -> Any:
    """A field of config overrides, ``((key, value), ...)``, given as repeatable ``NAME
    KEY=VALUE`` flags (``biglittle_sam.train.cli.parse_overrides`` reads them)."""
    return flag((), help, name=name, action="append", metavar="KEY=VALUE")


def field_comments(cls: type) -> Dict[str, str]:
    """Each field's trailing ``# comment`` in ``cls``'s source (empty where there is no source)."""
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return {}
    out: Dict[str, str] = {}
    names = {f.name for f in dataclasses.fields(cls)}
    current: Optional[str] = None
    for line in lines:
        match = re.match(r"\s+(\w+)\s*:", line)
        if match and match.group(1) in names:
            current = match.group(1)
        elif not line.strip() or re.match(r"\s+(def|@|class)\b", line):
            current = None
        if line.lstrip().startswith("#"):
            continue  # a comment line of its own speaks of what follows it
        _, hash_, comment = line.partition("  # ")
        if current and hash_:
            out[current] = (
                f"{out[current]} {comment.strip()}" if current in out else comment.strip()
            )
    return out


def _base_type(annotation: Any) -> Tuple[Any, bool]:
    """(element type, many values?) of ``Optional[X]``, ``Tuple[X, ...]`` or ``X``."""
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin is typing.Union and len(args) == 1:
        return _base_type(args[0])
    if origin in (tuple, list) and args:
        return args[0], True
    return annotation, False


def _flag_words(field: dataclasses.Field, annotation: Any, help_text: str) -> Dict[str, Any]:
    """``add_argument`` keywords for one field."""
    spec: FlagSpec = field.metadata.get(_CLI, FlagSpec())
    kind, many = _base_type(annotation)
    words: Dict[str, Any] = {"dest": field.name, "default": None, "help": help_text}
    if spec.action is not None:
        words["action"] = spec.action
    elif kind is bool:
        words["action"] = "store_true" if field.default is False else argparse.BooleanOptionalAction
    if words.get("action") not in ("store_true", "store_false", argparse.BooleanOptionalAction):
        element = spec.type or (kind if kind in (int, float) else None)
        if element is not None:
            words["type"] = element
        if many and spec.action != "append":
            words["nargs"] = "+"
    if spec.nargs is not None:
        words["nargs"] = spec.nargs
    for key in ("choices", "metavar"):
        if getattr(spec, key) is not None:
            words[key] = list(spec.choices) if key == "choices" else spec.metavar
    if spec.required:
        words["required"] = True
    return words


def add_settings_flags(
    parser: Any,
    settings_cls: type,
    *,
    only: Optional[Sequence[str]] = None,
    exclude: Sequence[str] = (),
    defaults: Optional[Mapping[str, Any]] = None,
) -> Any:
    """Add one flag per field of the dataclass ``settings_cls`` to ``parser`` (a parser or a group).

    Arguments:
      only: these fields only, in this order (default: every field with a flag, in field order).
      exclude: fields left out.
      defaults: the values ``--help`` shows (default: the dataclass's own defaults).

    Fields whose :class:`FlagSpec` names a ``group`` go into that argument group of the parser
    (created once, in order of first use). Returns ``parser``.
    """
    hints = typing.get_type_hints(settings_cls)
    comments = field_comments(settings_cls)
    fields = {f.name: f for f in dataclasses.fields(settings_cls)}
    names = list(only) if only is not None else list(fields)
    groups: Dict[str, Any] = {}
    shown: Dict[str, Any] = {}
    for name in names:
        field = fields[name]
        spec: FlagSpec = field.metadata.get(_CLI, FlagSpec())
        if name in exclude or not spec.cli or not field.init:
            continue
        target = parser
        if spec.group is not None:
            if spec.group not in groups:
                groups[spec.group] = _group(parser, spec.group)
            target = groups[spec.group]
        # a comment is plain text; argparse reads % in help as a format
        comment = comments.get(name, "").replace("%", "%%")
        help_text = spec.help if spec.help is not None else comment
        flags = [spec.name or "--" + name.replace("_", "-"), *spec.aliases]
        target.add_argument(*flags, **_flag_words(field, hints[name], help_text))
        for old in spec.old:
            add_old_spelling(target, old, name)
        if field.default is not dataclasses.MISSING:
            shown[name] = field.default
        elif field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            shown[name] = field.default_factory()  # type: ignore[misc]
    if defaults is not None:
        shown.update({k: v for k, v in defaults.items() if k in shown})
    describe_defaults(_root(parser), shown)
    return parser


def _root(parser: Any) -> argparse.ArgumentParser:
    """The parser behind an argument group (groups share their parser's actions)."""
    return getattr(parser, "_parser", None) or parser


def _group(parser: Any, title: str) -> Any:
    """The argument group ``title`` of ``parser``, created if it is new."""
    root = _root(parser)
    for group in root._action_groups:
        if group.title == title:
            return group
    group = root.add_argument_group(title)
    group._parser = root  # type: ignore[attr-defined]
    return group


def settings_kwargs(
    args: argparse.Namespace, settings_cls: type, *, exclude: Sequence[str] = ()
) -> Dict[str, Any]:
    """The flags given (not None) for ``settings_cls``'s fields, as its keyword arguments;
    lists become tuples where the field is a tuple."""
    hints = typing.get_type_hints(settings_cls)
    out: Dict[str, Any] = {}
    for field in dataclasses.fields(settings_cls):
        value = getattr(args, field.name, None)
        if value is None or field.name in exclude:
            continue
        if (
            isinstance(value, list)
            and typing.get_origin(_strip_optional(hints[field.name])) is tuple
        ):
            value = tuple(value)
        out[field.name] = value
    return out


def _strip_optional(annotation: Any) -> Any:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Union and len(args) == 1:
        return args[0]
    return annotation
