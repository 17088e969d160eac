"""Where routing costs a student: routed in every layer, in the windowed layers only, or in the
global layers only (the others run every token through the big block, as at keep ratio 1).

A diagnostic, not a model setting: the student is the one the benchmark trained (for routing in
every layer), and the mixed rows cost more than their keep ratio says (their encoder GMACs are
reported next to the mIoU). It answers "which layers' routing loses the mIoU", e.g. on the dev
split::

    python -m experiments.proxy.layers biglittle_sam/assets/proxy_student.pth \\
        --images outputs/proxy/data/dev/coco/val2017 \\
        --annotations outputs/proxy/data/dev/coco/annotations/instances_shapes.json
"""

from __future__ import annotations

import argparse
import contextlib
import functools
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from biglittle_sam.eval.models import build_eval_models
from biglittle_sam.eval.runner import EvalSettings, build_dataset, run_miou
from biglittle_sam.flops import encoder_macs
from biglittle_sam.modeling.image_encoder import ImageEncoderBigLittle
from biglittle_sam.runtime.distributed import init_distributed

__all__ = [
    "LAYER_KINDS",
    "format_layer_table",
    "layer_routing_miou",
    "layer_ratios",
    "routed_layers",
]

# Which layers route: "all" (the model as trained), "windowed" (global layers dense), "global".
LAYER_KINDS = ("all", "windowed", "global")


def _dense(
    forward: Callable[..., Any],
    block: nn.Module,
    x: Tensor,
    keep_ratio: float = 1.0,
    *args: Any,
    **kwargs: Any,
) -> Any:
    """``block``'s own forward at keep ratio 1, whatever ratio the encoder passes."""
    return forward(block, x, 1.0, *args, **kwargs)


def _routes(encoder: ImageEncoderBigLittle, kind: str) -> List[bool]:
    """Per layer, whether it routes when only the ``kind`` layers do."""
    if kind not in LAYER_KINDS:
        raise ValueError(f"kind must be one of {LAYER_KINDS}, got {kind!r}")
    return [kind == "all" or (kind == "global") == (b.window_size == 0) for b in encoder.blocks]


def layer_ratios(encoder: ImageEncoderBigLittle, kind: str, keep_ratio: float) -> List[float]:
    """Each layer's keep ratio when only the ``kind`` layers route at ``keep_ratio``."""
    return [keep_ratio if routes else 1.0 for routes in _routes(encoder, kind)]


@contextlib.contextmanager
def routed_layers(encoder: ImageEncoderBigLittle, kind: str) -> Iterator[List[int]]:
    """Inside the block, only the ``kind`` layers of ``encoder`` route; the others run dense.

    The dense blocks get an instance-level ``forward`` that passes keep ratio 1 to the class's
    forward; it is removed on exit, so the encoder is unchanged afterwards.

    Arguments:
      encoder: a big.LITTLE image encoder.
      kind: one of :data:`LAYER_KINDS`.

    Yields:
      The indices of the layers that route.
    """
    routes = _routes(encoder, kind)
    patched: List[nn.Module] = []
    for block, routed in zip(encoder.blocks, routes):
        if not routed and "forward" not in vars(block):  # evaluation rows may share one model
            block.forward = functools.partial(_dense, type(block).forward, block)  # type: ignore
            patched.append(block)
    try:
        yield [i for i, routed in enumerate(routes) if routed]
    finally:
        for block in patched:
            del block.forward


def layer_routing_miou(
    student: str,
    images: str,
    annotations: str,
    ratios: Sequence[float] = (0.5, 0.25, 0.1),
    device: str = "cpu",
    threads: Optional[int] = None,
) -> Dict[str, Dict[float, Tuple[float, float]]]:
    """1-click mIoU (x 100, EfficientViT-SAM protocol) of a ``bl_tiny`` student at each ratio,
    routing in each kind of layer (:data:`LAYER_KINDS`), in one process.

    Returns:
      ``{kind: {ratio: (1-click mIoU, encoder GMACs)}}``.
    """
    specs = tuple(f"bl_tiny={student}@{r:g}" for r in ratios)
    settings = EvalSettings(
        models=specs, images=images, annotations=annotations, clicks=(1,), device=device,
        threads=threads, progress=False,
    ).resolved()  # fmt: skip
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    ctx, dev = init_distributed(settings.device)
    dataset = build_dataset(settings)
    models = build_eval_models(settings.models, dev, settings.seed)
    encoders = [m.predictor.sam.image_encoder for m in models]  # type: ignore[attr-defined]
    out: Dict[str, Dict[float, Tuple[float, float]]] = {}
    for kind in LAYER_KINDS:
        with contextlib.ExitStack() as stack:
            for encoder in encoders:
                stack.enter_context(routed_layers(encoder, kind))
            result = run_miou(settings, dataset, models, ctx)
        assert result is not None  # one process: rank 0
        out[kind] = {
            r: (
                row["miou"]["click1"]["all"],
                encoder_macs(enc, layer_ratios=layer_ratios(enc, kind, r))["total"] / 1e9,
            )
            for r, row, enc in zip(ratios, result["models"], encoders)
        }
    return out


def format_layer_table(result: Dict[str, Dict[float, Tuple[float, float]]]) -> str:
    """The markdown table of :func:`layer_routing_miou`'s result: 1-click mIoU (GMACs)."""
    ratios = list(next(iter(result.values())))
    names = {
        "all": "every layer (as trained)",
        "windowed": "windowed layers only",
        "global": "global layers only",
    }
    lines = [
        "| routed in: 1 click (GMACs) | " + " | ".join(f"r = {r:g}" for r in ratios) + " |",
        "|---|" + "---:|" * len(ratios),
    ]
    for kind, row in result.items():
        cells = " | ".join(f"{row[r][0]:.1f} ({row[r][1]:.4f})" for r in ratios)
        lines.append(f"| {names[kind]} | {cells} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Dict[float, Tuple[float, float]]]:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.proxy.layers", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("student", help="a bl_tiny checkpoint of the proxy benchmark")
    parser.add_argument("--images", required=True, help="COCO image folder of a proxy split")
    parser.add_argument("--annotations", required=True, help="its COCO annotation json")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.5, 0.25, 0.1])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    result = layer_routing_miou(
        args.student, args.images, args.annotations, args.ratios, args.device, args.threads
    )
    print(format_layer_table(result))
    return result


if __name__ == "__main__":
    main()
