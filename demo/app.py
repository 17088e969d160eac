"""Interactive Segment Anything demo: big.LITTLE against plain SAM, on a laptop CPU.

    biglittle-sam-demo                                  # the built-in toy models and examples
    biglittle-sam-demo --sam-checkpoint sam_vit_b_01ec64.pth --checkpoint bl_b=bl_b.pth

The logic lives in :mod:`biglittle_sam.demo`; this module only lays out the page, wires the events
and parses the command line. Nothing is loaded at import: :func:`main` loads the models.
"""

import argparse
import functools
import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import gradio as gr
import numpy as np
import torch

from biglittle_sam.checkpoint import CheckpointError
from biglittle_sam.demo.models import DemoModel, default_model_paths, load_models
from biglittle_sam.demo.session import (
    MODE_POSITIVE,
    MODES,
    NO_IMAGE,
    DemoController,
    DemoSession,
    Settings,
    View,
)

__all__ = [
    "EXAMPLES_DIR",
    "build_demo",
    "build_parser",
    "main",
    "parse_args",
    "parse_prompts_json",
]

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
AUTO_PARTNER = "auto: plain SAM of the same size"
LOG = logging.getLogger("biglittle_sam_demo")
INTRO = """# big.LITTLE Segment Anything
Click on an object to segment it. **Click adds** picks positive points, negative points (to cut a
region away) or a box (two corner clicks). The big.LITTLE encoder sends only the top *keep ratio*
share of tokens through SAM's big blocks; the heat map shows which ones.
"""


def _upload_path(payload: Any) -> Optional[str]:
    """The file path in a raw ``gr.Image`` payload (the load event skips Gradio's preprocessing, so
    that an upload Pillow cannot open reaches the handler, which reports it, instead of failing
    inside Gradio with a bare "Error"). Gradio has already checked that the file is an upload in
    its own cache folder."""
    if isinstance(payload, dict):
        path = payload.get("path")
        return str(path) if path else None
    return str(payload) if isinstance(payload, str) and payload else None


def _settings(
    model: str,
    keep_ratio: float,
    mode: str,
    multimask: bool,
    heat: bool,
    compare: bool,
    partner: Optional[str],
) -> Settings:
    return Settings(
        model=model,
        keep_ratio=float(keep_ratio if keep_ratio is not None else 0.5),
        mode=mode if mode in MODES else MODE_POSITIVE,
        multimask=bool(multimask),
        heat=bool(heat),
        compare=bool(compare),
        compare_model=None if partner in (None, AUTO_PARTNER) else partner,
    )


def _outputs(session: DemoSession, view: View, settings: Settings) -> Tuple[Any, ...]:
    """(state, canvas, compare canvas, compare text, mask choice, gallery, cost, message)."""
    if view.level in ("warning", "error") and view.message:
        title = "Error" if view.level == "error" else "Note"
        gr.Warning(view.message.replace("\n\n", " ").replace("\n- ", " "), title=title)
    choices = [(label, i) for i, label in enumerate(view.choices)]
    text = f"**Error:** {view.message}" if view.level == "error" else view.message
    return (
        session,
        view.canvas,
        gr.Image(value=view.compare_canvas, visible=settings.compare),
        gr.Markdown(value=view.compare_text, visible=settings.compare),
        gr.Radio(choices=choices, value=view.choice, visible=bool(choices)),
        gr.Gallery(value=view.masks or None, visible=bool(view.masks)),
        view.cost,
        text,
    )


def parse_prompts_json(
    text: str,
) -> Tuple[List[Tuple[float, float, bool]], Optional[Tuple[float, float, float, float]]]:
    """``{"points": [[x, y, label], ...], "box": [x0, y0, x1, y1]}`` -> (points, box).

    Raises:
      ValueError: not JSON, or the wrong shape, with a message that says what is expected.
    """
    try:
        data = json.loads(text or "{}")
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON ({e.msg})") from None
    if not isinstance(data, dict):
        raise ValueError('expected an object like {"points": [[x, y, 1]], "box": [x0, y0, x1, y1]}')
    points = []
    for item in data.get("points") or []:
        if not (isinstance(item, (list, tuple)) and len(item) in (2, 3)):
            raise ValueError(f"a point must be [x, y] or [x, y, label], got {item!r}")
        try:
            x, y = float(item[0]), float(item[1])
            label = int(item[2]) if len(item) == 3 else 1
        except (TypeError, ValueError):
            raise ValueError(f"a point must hold numbers, got {item!r}") from None
        if label not in (0, 1):
            raise ValueError(f"a point label must be 1 (positive) or 0 (negative), got {label}")
        points.append((x, y, label == 1))
    box = data.get("box")
    if box is not None:
        if not (isinstance(box, (list, tuple)) and len(box) == 4):
            raise ValueError(f"the box must be [x0, y0, x1, y1], got {box!r}")
        try:
            box = tuple(float(v) for v in box)
        except (TypeError, ValueError):
            raise ValueError(f"the box must hold numbers, got {box!r}") from None
    return points, box


def _guarded(fn: Callable[..., Tuple[Any, ...]]) -> Callable[..., Tuple[Any, ...]]:
    """Turn an unexpected exception into a visible message; the server keeps serving."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Tuple[Any, ...]:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as e:  # noqa: BLE001 - last line of defence for the page
            LOG.exception("demo handler %s failed", fn.__name__)
            raise gr.Error(f"Something went wrong: {type(e).__name__}: {e}") from None

    return wrapper


def build_demo(
    models: Dict[str, DemoModel],
    examples_dir: Optional[Path] = EXAMPLES_DIR,
    export_dir: Optional[Path] = None,
) -> gr.Blocks:
    """The page. ``models`` are shared by all sessions (read-only); each session has its own
    :class:`DemoSession` in ``gr.State``."""
    controller = DemoController(models, export_dir)
    default = controller.default_model()
    default_model = models[default]
    names = list(models)
    examples: List[str] = []
    if examples_dir is not None and examples_dir.is_dir():
        examples = [str(p) for p in sorted(examples_dir.glob("*.png"))]

    def session_of(state: Optional[DemoSession]) -> DemoSession:
        return state if isinstance(state, DemoSession) else DemoSession()

    with gr.Blocks(title="big.LITTLE SAM demo", analytics_enabled=False) as demo:
        state = gr.State(None)
        gr.Markdown(INTRO)
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                image_input = gr.Image(
                    label="Image: upload or paste",
                    type="filepath",
                    image_mode=None,
                    sources=["upload", "clipboard"],
                    height=220,
                    elem_id="image-input",
                )
                if examples:
                    gr.Examples(examples, inputs=[image_input], label="Examples")
                model = gr.Dropdown(names, value=default, label="Model", elem_id="model")
                keep_ratio = gr.Slider(
                    0.05,
                    1.0,
                    value=default_model.default_keep_ratio,
                    step=0.05,
                    label="Keep ratio: share of tokens through the big blocks (big.LITTLE)",
                    interactive=default_model.is_biglittle,
                    elem_id="keep-ratio",
                )
                mode = gr.Radio(
                    list(MODES), value=MODE_POSITIVE, label="Click adds", elem_id="mode"
                )
                with gr.Row():
                    undo = gr.Button("Undo last prompt", elem_id="undo")
                    clear = gr.Button("Clear all", elem_id="clear")
                multimask = gr.Checkbox(True, label="Multimask output: 3 masks to choose from")
                heat = gr.Checkbox(False, label="Heat map: where the big blocks spent compute")
                compare = gr.Checkbox(False, label="Compare: plain SAM and big.LITTLE side by side")
                partner = gr.Dropdown(
                    [AUTO_PARTNER] + names, value=AUTO_PARTNER, label="Compare with"
                )
                with gr.Group():
                    points_per_side = gr.Slider(
                        4, 64, value=16, step=4, label="Segment everything: points per side"
                    )
                    min_iou_default, min_stability_default = default_model.everything_thresholds
                    min_iou = gr.Slider(
                        0.0, 1.0, value=min_iou_default, step=0.05,
                        label="Keep masks with predicted IoU at least",
                    )  # fmt: skip
                    min_stability = gr.Slider(
                        0.0, 1.0, value=min_stability_default, step=0.05,
                        label="Keep masks with stability score at least",
                    )  # fmt: skip
                    everything = gr.Button("Segment everything", elem_id="everything")
                export = gr.Button("Download mask (PNG + COCO RLE json)", elem_id="export")
                files = gr.File(
                    label="Downloads", file_count="multiple", interactive=False, height=120
                )
            with gr.Column(scale=2, min_width=480):
                message = gr.Markdown(NO_IMAGE, elem_id="message")
                with gr.Row():
                    canvas = gr.Image(
                        label="Click on the image",
                        type="numpy",
                        format="png",
                        interactive=False,
                        elem_id="canvas",
                    )
                    compare_canvas = gr.Image(
                        label="Compare model",
                        type="numpy",
                        format="png",
                        interactive=False,
                        visible=False,
                        elem_id="compare-canvas",
                    )
                compare_text = gr.Markdown(visible=False, elem_id="compare-text")
                choice = gr.Radio(
                    [], label="Candidate masks (predicted IoU)", visible=False, elem_id="choice"
                )
                gallery = gr.Gallery(
                    label="Candidate masks", columns=3, height=200, visible=False, format="png"
                )
                cost = gr.Markdown(elem_id="cost")
                # For API clients: prompts as JSON in image pixels (see on_prompts); not shown.
                api_prompts = gr.Textbox(visible=False, label="Prompts (JSON)")

        controls = [model, keep_ratio, mode, multimask, heat, compare, partner]
        view_outputs = [state, canvas, compare_canvas, compare_text, choice, gallery, cost, message]

        # Every handler takes the session state and the seven controls (model, keep ratio, click
        # mode, multimask, heat map, compare, compare partner) as named parameters, so Gradio can
        # see the SelectData / Progress parameters it injects.
        @_guarded
        def on_load(
            state_value: Any, payload: Any, m: str, r: float, md: str, mm: bool, h: bool,
            c: bool, p: str,
        ) -> Tuple[Any, ...]:  # fmt: skip
            session, settings = session_of(state_value), _settings(m, r, md, mm, h, c, p)
            view = controller.load(session, _upload_path(payload), settings)
            return _outputs(session, view, settings)

        @_guarded
        def on_click(
            state_value: Any, m: str, r: float, md: str, mm: bool, h: bool, c: bool, p: str,
            evt: gr.SelectData,
        ) -> Tuple[Any, ...]:  # fmt: skip
            session, settings = session_of(state_value), _settings(m, r, md, mm, h, c, p)
            index = evt.index if isinstance(evt.index, (list, tuple)) else None
            if session.image is None or index is None or len(index) != 2:
                view = View(canvas=None, message=NO_IMAGE, level="warning")
            else:
                view = controller.click(session, settings, float(index[0]), float(index[1]))
            return _outputs(session, view, settings)

        @_guarded
        def on_undo(
            state_value: Any, m: str, r: float, md: str, mm: bool, h: bool, c: bool, p: str
        ) -> Tuple[Any, ...]:
            session, settings = session_of(state_value), _settings(m, r, md, mm, h, c, p)
            return _outputs(session, controller.undo(session, settings), settings)

        @_guarded
        def on_clear(
            state_value: Any, m: str, r: float, md: str, mm: bool, h: bool, c: bool, p: str
        ) -> Tuple[Any, ...]:
            session, settings = session_of(state_value), _settings(m, r, md, mm, h, c, p)
            return _outputs(session, controller.clear(session, settings), settings)

        @_guarded
        def on_refresh(
            state_value: Any, m: str, r: float, md: str, mm: bool, h: bool, c: bool, p: str
        ) -> Tuple[Any, ...]:
            session, settings = session_of(state_value), _settings(m, r, md, mm, h, c, p)
            return _outputs(session, controller.refresh(session, settings), settings)

        @_guarded
        def on_model(
            state_value: Any, m: str, r: float, md: str, mm: bool, h: bool, c: bool, p: str
        ) -> Tuple[Any, ...]:
            chosen = controller.model(m)
            settings = _settings(m, chosen.default_keep_ratio, md, mm, h, c, p)
            session = session_of(state_value)
            view = controller.refresh(session, settings, f"Model: {chosen.name}.")
            slider = gr.Slider(value=chosen.default_keep_ratio, interactive=chosen.is_biglittle)
            return (slider,) + _outputs(session, view, settings)

        @_guarded
        def on_choose(
            state_value: Any, index: Optional[int], m: str, r: float, md: str, mm: bool, h: bool,
            c: bool, p: str,
        ) -> Tuple[Any, ...]:  # fmt: skip
            session, settings = session_of(state_value), _settings(m, r, md, mm, h, c, p)
            if index is None:
                return _outputs(session, controller.refresh(session, settings), settings)
            return _outputs(session, controller.choose(session, settings, int(index)), settings)

        @_guarded
        def on_gallery(
            state_value: Any, m: str, r: float, md: str, mm: bool, h: bool, c: bool, p: str,
            evt: gr.SelectData,
        ) -> Tuple[Any, ...]:  # fmt: skip
            session, settings = session_of(state_value), _settings(m, r, md, mm, h, c, p)
            index = evt.index if isinstance(evt.index, int) else 0
            return _outputs(session, controller.choose(session, settings, index), settings)

        @_guarded
        def on_everything(
            state_value: Any, pps: float, iou: float, stability: float, m: str, r: float, md: str,
            mm: bool, h: bool, c: bool, p: str,
            progress: gr.Progress = gr.Progress(),  # noqa: B008 - Gradio's idiom
        ) -> Tuple[Any, ...]:  # fmt: skip
            session, settings = session_of(state_value), _settings(m, r, md, mm, h, c, p)
            progress(0.0, desc="encoding")

            def report(fraction: float, text: str) -> None:
                progress(fraction, desc=text)

            view = controller.everything(session, settings, int(pps), report, iou, stability)
            return _outputs(session, view, settings)

        @_guarded
        def on_prompts(
            state_value: Any, text: str, m: str, r: float, md: str, mm: bool, h: bool, c: bool,
            p: str,
        ) -> Tuple[Any, ...]:  # fmt: skip
            """Add prompts in image pixels: {"points": [[x, y, 1 or 0], ...], "box": [x0, y0, x1,
            y1]} (both optional; label 1 positive, 0 negative)."""
            session, settings = session_of(state_value), _settings(m, r, md, mm, h, c, p)
            try:
                points, box = parse_prompts_json(text)
            except ValueError as e:
                view = View(canvas=None, message=f"Bad prompts: {e}", level="error")
                return _outputs(session, view, settings)
            return _outputs(
                session, controller.add_prompts(session, settings, points, box), settings
            )

        @_guarded
        def on_export(
            state_value: Any, m: str, r: float, md: str, mm: bool, h: bool, c: bool, p: str
        ) -> Tuple[Any, ...]:
            session, settings = session_of(state_value), _settings(m, r, md, mm, h, c, p)
            paths, view = controller.export(session, settings)
            return (session, [str(path) for path in paths] or None, view.message)

        image_input.change(
            on_load,
            [state, image_input, *controls],
            view_outputs,
            api_name="load_image",
            preprocess=False,  # see _upload_path
        )
        canvas.select(on_click, [state, *controls], view_outputs, api_name="click")
        undo.click(on_undo, [state, *controls], view_outputs, api_name="undo")
        clear.click(on_clear, [state, *controls], view_outputs, api_name="clear")
        model.input(on_model, [state, *controls], [keep_ratio, *view_outputs], api_name="model")
        # Dragging sends many values: one encoder pass at a time, then only the latest value.
        gr.on(
            [keep_ratio.release, keep_ratio.input],
            on_refresh,
            [state, *controls],
            view_outputs,
            api_name="keep_ratio",
            trigger_mode="always_last",
        )
        for control in (multimask, heat, compare, partner, mode):
            control.input(on_refresh, [state, *controls], view_outputs, api_name=False)
        choice.input(on_choose, [state, choice, *controls], view_outputs, api_name="choose")
        gallery.select(on_gallery, [state, *controls], view_outputs, api_name=False)
        everything.click(
            on_everything,
            [state, points_per_side, min_iou, min_stability, *controls],
            view_outputs,
            api_name="everything",
        )
        api_prompts.submit(
            on_prompts, [state, api_prompts, *controls], view_outputs, api_name="prompts"
        )
        export.click(on_export, [state, *controls], [state, files, message], api_name="export")
    return demo


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


def _warm_up(models: Dict[str, DemoModel]) -> None:
    """One encode + decode per model at start-up, so the first user click is not the slow one."""
    from biglittle_sam.demo.engine import decode_prompts, encode_image

    image = np.zeros((64, 64, 3), dtype=np.uint8)
    for model in models.values():
        encoded = encode_image(model, image, model.default_keep_ratio)
        decode_prompts(model, encoded, np.array([[32.0, 32.0]]), np.array([1]), None, True)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads is not None:
        torch.set_num_threads(max(1, args.threads))
    device = args.device or "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit(f"biglittle-sam-demo: --device {device}, but CUDA is not available")
    if (
        not args.no_builtin
        and not default_model_paths()
        and not (args.checkpoint or args.sam_checkpoint)
    ):
        sys.exit(
            "biglittle-sam-demo: the built-in models (biglittle_sam/assets/*.pth) are missing and "
            "no --checkpoint / --sam-checkpoint was given"
        )
    try:
        models = load_models(
            args.checkpoint or (), args.sam_checkpoint or (), device, builtin=not args.no_builtin
        )
    except (CheckpointError, OSError, ValueError) as e:
        sys.exit(f"biglittle-sam-demo: {e}")
    if not models:
        sys.exit("biglittle-sam-demo: no models to serve; give --checkpoint or --sam-checkpoint")
    for model in models.values():
        LOG.info("model %s: %s (%s)", model.name, model.describe(), model.source)
    LOG.info("warming up (one encoder pass per model)")
    _warm_up(models)
    demo = build_demo(models)
    demo.queue(default_concurrency_limit=2, max_size=64)
    demo.launch(
        server_name=args.host,
        server_port=args.port,
        share=args.share,
        max_file_size="100mb",
    )


if __name__ == "__main__":
    main()
