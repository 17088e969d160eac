"""Interactive Segment Anything demo: big.LITTLE against plain SAM, on a laptop CPU.

    biglittle-sam-demo                                  # the built-in toy models and examples
    biglittle-sam-demo --sam-checkpoint sam_vit_b_01ec64.pth --checkpoint bl_b=bl_b.pth

The logic and the page live in :mod:`biglittle_sam.demo`; this module only parses the command line
and launches. Nothing is loaded at import: :func:`main` loads the models.
"""

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable, Dict, NoReturn, Optional, Sequence, Tuple

import numpy as np
import torch

from biglittle_sam.checkpoint import CheckpointError
from biglittle_sam.demo.engine import decode_prompts, encode_image
from biglittle_sam.demo.models import DemoModel, default_model_paths, load_models
from biglittle_sam.demo.page import Bounds, build_demo, launch_options

__all__ = ["EXAMPLES_DIR", "bounds_from_args", "build_parser", "main", "parse_args"]

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
LOG = logging.getLogger("biglittle_sam_demo")
# (flag, type, metavar, help): each sets the Bounds field of the same name.
BOUND_FLAGS: Tuple[Tuple[str, Callable[[str], float], str, str], ...] = (
    ("--max-sessions", int, "N", "sessions kept in memory; beyond N the least recently used goes"),
    ("--session-ttl", float, "SECONDS", "an idle session is deleted with its files after this"),
    ("--file-max-age", int, "SECONDS", "uploaded and served files older than this are deleted"),
    ("--encodings-per-session", int, "N", "encoder outputs cached per session (model x ratio)"),
)


def build_parser() -> argparse.ArgumentParser:
    """The demo's command line (``biglittle-sam-demo``)."""
    parser = argparse.ArgumentParser(
        prog="biglittle-sam-demo",
        description="Interactive Segment Anything demo with the big.LITTLE image encoder.",
    )
    models = parser.add_argument_group("models (the built-in toy models are always offered)")
    models.add_argument(
        "--checkpoint",
        action="append",
        default=None,
        metavar="[NAME=]PATH",
        help="a big.LITTLE (or plain SAM) checkpoint to serve; repeatable. NAME labels it in the "
        "model menu; a registry name (bl_b, vit_b, ...) also says which model a bare state dict "
        "is (default: none)",
    )
    models.add_argument(
        "--sam-checkpoint",
        action="append",
        default=None,
        metavar="[NAME=]PATH",
        help="an official SAM checkpoint (vit_b / vit_l / vit_h, recognised from the weights); "
        "the plain SAM to compare with; repeatable (default: none)",
    )
    models.add_argument(
        "--no-builtin",
        action="store_true",
        help="do not offer the built-in toy models (default: offered)",
    )
    models.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA when available), cpu, cuda or cuda:N (default: auto)",
    )
    models.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    server = parser.add_argument_group("server")
    server.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    server.add_argument("--port", type=int, default=None, help="port (default: Gradio's, 7860)")
    server.add_argument(
        "--share", action="store_true", help="also open a public gradio.live link (off by default)"
    )
    limits = parser.add_argument_group("bounds on what the server keeps per user (docs/demo.md)")
    default = Bounds()
    for flag, kind, metavar, text in BOUND_FLAGS:
        value = getattr(default, flag[2:].replace("-", "_"))
        limits.add_argument(
            flag,
            type=_positive(kind),
            default=None,
            metavar=metavar,
            help=f"{text} (default {value:g})",
        )
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The parsed command line; ``--device auto`` comes back as the device it stands for, and a
    device that is not there is a usage error (exit 2)."""
    from biglittle_sam.runtime.distributed import resolve_device

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.device = str(resolve_device(args.device))
    except ValueError as e:
        parser.error(str(e))
    return args


def _positive(kind: Callable[[str], float]) -> Callable[[str], float]:
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


def bounds_from_args(args: argparse.Namespace) -> Bounds:
    """The bounds given on the command line; the others keep :class:`Bounds`' defaults."""
    names = [flag[2:].replace("-", "_") for flag, _, _, _ in BOUND_FLAGS]
    given = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    return Bounds(**given)


def _warm_up(models: Dict[str, DemoModel]) -> None:
    """One encode + decode per model at start-up, so the first user click is not the slow one."""
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    for model in models.values():
        encoded = encode_image(model, image, model.default_keep_ratio)
        decode_prompts(model, encoded, np.array([[32.0, 32.0]]), np.array([1]), None, True)


def _usage_error(message: str) -> NoReturn:
    """Exit 2, as every tool does for a command line it cannot serve, with one ``error:`` line."""
    print(f"biglittle-sam-demo: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads is not None:
        torch.set_num_threads(max(1, args.threads))
    if (
        not args.no_builtin
        and not default_model_paths()
        and not (args.checkpoint or args.sam_checkpoint)
    ):
        _usage_error(
            "the built-in models (biglittle_sam/assets/*.pth) are missing and no --checkpoint / "
            "--sam-checkpoint was given"
        )
    try:
        models = load_models(
            args.checkpoint or (),
            args.sam_checkpoint or (),
            args.device,
            builtin=not args.no_builtin,
        )
    except (CheckpointError, OSError, ValueError) as e:
        _usage_error(str(e))
    if not models:
        _usage_error("no models to serve; give --checkpoint or --sam-checkpoint")
    for model in models.values():
        LOG.info("model %s: %s (%s)", model.name, model.describe(), model.source)
    LOG.info("warming up (one encoder pass per model)")
    _warm_up(models)
    bounds = bounds_from_args(args)
    demo = build_demo(models, EXAMPLES_DIR, bounds=bounds)
    demo.queue(default_concurrency_limit=2, max_size=64)
    demo.launch(
        server_name=args.host,
        server_port=args.port,
        share=args.share,
        max_file_size="100mb",
        **launch_options(bounds),
    )


if __name__ == "__main__":
    main()
