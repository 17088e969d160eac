"""Command-line helpers shared by the tools: the training flags of ``distill`` and ``finetune``,
defaults shown in ``--help``, and the exit statuses.

Every flag defaults to None and only the flags a user gives are passed on, so the dataclass
defaults (``TrainSettings``, ``DistillSettings``, ``FinetuneSettings``) stay the only defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, TypeVar

from .settings import AMP_MODES, TrainSettings

__all__ = [
    "add_config_argument",
    "add_train_arguments",
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

T = TypeVar("T")

# (flag attribute, TrainSettings field)
_TRAIN_FIELDS = (
    "steps",
    "batch_size",
    "grad_accum",
    "lr",
    "min_lr_ratio",
    "warmup_steps",
    "weight_decay",
    "clip_grad",
    "amp",
    "seed",
    "device",
    "num_workers",
    "threads",
    "out_dir",
    "checkpoint_every",
    "keep_last",
    "log_every",
    "resume",
    "stop_after",
    "ema_decay",
)


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    """``--config FILE``: a recipe of settings fields (``biglittle_sam.train.recipes``)."""
    parser.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="a recipe: settings fields in a .yaml, .toml or .json file (train fields under "
        "'train'); flags given override it (default: none)",
    )


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``optimization`` and ``run`` argument groups (``TrainSettings``)."""
    opt = parser.add_argument_group("optimization")
    opt.add_argument("--steps", type=int, default=None, help="optimizer steps")
    opt.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="images per step over all processes and accumulation steps",
    )
    opt.add_argument("--grad-accum", type=int, default=None, help="micro-batches per step")
    opt.add_argument("--lr", type=float, default=None, help="peak learning rate")
    opt.add_argument("--min-lr-ratio", type=float, default=None, help="final lr / peak lr")
    opt.add_argument("--warmup-steps", type=int, default=None, help="default: 5%% of steps")
    opt.add_argument(
        "--weight-decay", type=float, default=None, help="AdamW decay (not on norms, biases)"
    )
    opt.add_argument(
        "--betas",
        type=float,
        nargs=2,
        default=None,
        metavar=("B1", "B2"),
        help="AdamW moment decay rates",
    )
    opt.add_argument("--clip-grad", type=float, default=None, help="max gradient norm; 0: off")
    opt.add_argument("--amp", choices=AMP_MODES, default=None, help="bf16 autocast (auto: CUDA)")
    opt.add_argument(
        "--seed", type=int, default=None, help="data order, prompts, keep ratios, fresh weights"
    )
    opt.add_argument(
        "--ema-decay",
        type=float,
        default=None,
        help="the final model is a moving average of the weights with this decay (0: off)",
    )
    run = parser.add_argument_group("run")
    run.add_argument(
        "--device", default=None, help="auto (CUDA when available), cpu, cuda or cuda:N"
    )
    run.add_argument("--num-workers", type=int, default=None, help="data loader processes")
    run.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    run.add_argument("--out-dir", default=None, help="checkpoints, metrics, plot, model.pth")
    run.add_argument("--checkpoint-every", type=int, default=None, help="steps between saves")
    run.add_argument(
        "--keep-checkpoints", action="store_true", default=None, help="keep step_<N>.pth too"
    )
    run.add_argument(
        "--keep-last",
        type=int,
        default=None,
        metavar="N",
        help="with --keep-checkpoints, keep only the newest N step_<N>.pth (default: 10; 0: all)",
    )
    run.add_argument("--log-every", type=int, default=None, help="steps between metric lines")
    run.add_argument(
        "--tensorboard", action="store_true", default=None, help="also write TensorBoard events"
    )
    run.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar with loss, lr, images/s and ETA",
    )
    run.add_argument(
        "--resume", default=None, help="a training checkpoint, or 'auto' (out-dir's last.pth)"
    )
    run.add_argument(
        "--stop-after", type=int, default=None, help="stop (with a checkpoint) after N steps"
    )


def train_settings_from_args(args: argparse.Namespace, defaults: TrainSettings) -> TrainSettings:
    """``defaults`` with the train flags that were given."""
    changes: Dict[str, Any] = {
        f: getattr(args, f) for f in _TRAIN_FIELDS if getattr(args, f, None) is not None
    }
    if getattr(args, "betas", None) is not None:
        changes["betas"] = tuple(args.betas)
    for flag in ("keep_checkpoints", "tensorboard"):
        if getattr(args, flag, None):
            changes[flag] = True
    if getattr(args, "progress", None) is not None:
        changes["progress"] = args.progress
    return dataclasses.replace(defaults, **changes)


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
