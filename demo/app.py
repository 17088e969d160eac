"""Interactive Segment Anything demo: big.LITTLE against plain SAM, on a laptop CPU.

    biglittle-sam-demo                                  # the built-in toy models and examples
    biglittle-sam-demo --sam-checkpoint sam_vit_b_01ec64.pth --checkpoint bl_b=bl_b.pth

The logic and the page live in :mod:`biglittle_sam.demo`; this module only parses the command line
and launches. Nothing is loaded at import: :func:`main` loads the models.
"""

import argparse
import dataclasses
import logging
import sys
from pathlib import Path
from typing import Dict, NoReturn, Optional, Sequence

import numpy as np
import torch

from biglittle_sam.checkpoint import CheckpointError
from biglittle_sam.demo.engine import decode_prompts, encode_image
from biglittle_sam.demo.models import DemoModel, default_model_paths, load_models
from biglittle_sam.demo.page import build_demo, launch_options
from biglittle_sam.demo.settings import Bounds, ServeSettings
from biglittle_sam.runtime.cli import add_settings_flags, settings_kwargs

__all__ = ["EXAMPLES_DIR", "bounds_from_args", "build_parser", "main", "parse_args"]

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
LOG = logging.getLogger("biglittle_sam_demo")


def build_parser() -> argparse.ArgumentParser:
    """The demo's command line (``biglittle-sam-demo``), from :class:`ServeSettings` and
    :class:`Bounds`."""
    parser = argparse.ArgumentParser(
        prog="biglittle-sam-demo",
        description="Interactive Segment Anything demo with the big.LITTLE image encoder.",
    )
    add_settings_flags(parser, ServeSettings)
    return add_settings_flags(parser, Bounds)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The parsed command line, with :class:`ServeSettings`' defaults for the flags not given;
    ``--device auto`` comes back as the device it stands for, and a device that is not there is
    a usage error (exit 2)."""
    from biglittle_sam.runtime.distributed import resolve_device

    parser = build_parser()
    args = parser.parse_args(argv)
    vars(args).update(dataclasses.asdict(ServeSettings(**settings_kwargs(args, ServeSettings))))
    try:
        args.device = str(resolve_device(args.device))
    except ValueError as e:
        parser.error(str(e))
    return args


def bounds_from_args(args: argparse.Namespace) -> Bounds:
    """The bounds given on the command line; the others keep :class:`Bounds`' defaults."""
    return Bounds(**settings_kwargs(args, Bounds))


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
            training_free=args.training_free,
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
