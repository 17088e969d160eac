"""The demo's Gradio page: the layout, one handler factory for every event, and the bounds on
what the server keeps per user.

Each handler turns the page's values into a :class:`Settings` and a :class:`DemoSession`, calls one
:class:`DemoController` action, and turns its :class:`View` into component updates.
"""

from __future__ import annotations

import functools
import inspect
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import gradio as gr

from .controller import DemoController
from .models import DemoModel
from .prompts import parse_prompts_json
from .session import (
    CACHE_ENTRIES,
    MODE_POSITIVE,
    MODES,
    NO_IMAGE,
    DemoSession,
    ProgressFn,
    Settings,
    View,
)

__all__ = [
    "AUTO_PARTNER",
    "Bounds",
    "INTRO",
    "TOY_NOTE",
    "build_demo",
    "launch_options",
    "make_handler",
    "model_label",
]

LOG = logging.getLogger("biglittle_sam_demo")
AUTO_PARTNER = "auto: plain SAM of the same size"
INTRO = """# big.LITTLE Segment Anything
Click on an object in the picture to segment it. **Click adds** picks positive points, negative
points (to cut a region away) or a box (two corner clicks). The big.LITTLE encoder sends only the
top *keep ratio* share of tokens through SAM's big blocks; the heat map shows which ones.
"""
TOY_NOTE = (
    "**Built-in models are toys:** small, weak models trained only on synthetic shapes like "
    "the examples; they do not segment photos. To serve real ones: "
    "`biglittle-sam-demo --sam-checkpoint sam_vit_b_01ec64.pth --checkpoint bl_b=PATH.pth`"
)
# The seven controls every handler receives, by the parameter names the API shows.
CONTROLS = ("m", "r", "md", "mm", "h", "c", "p")
Action = Callable[..., View]  # (session, settings, report, *extra values) -> View


@dataclass(frozen=True)
class Bounds:
    """What the server keeps per user, and for how long.

    Attributes:
      max_sessions: sessions whose state is kept in memory; beyond it the least recently used is
        dropped (Gradio's ``state_session_capacity``).
      session_ttl: seconds a session's state lives after its last action (``gr.State``'s
        ``time_to_live``); then its encodings, masks, downloads and uploads are deleted.
      file_max_age: seconds Gradio keeps uploaded and served files; checked every
        ``min(file_max_age, 600)`` s (``gr.Blocks``' ``delete_cache``).
      encodings_per_session: encoder outputs cached per session (model x keep ratio).
    """

    max_sessions: int = 64
    session_ttl: float = 1800.0
    file_max_age: int = 3600
    encodings_per_session: int = CACHE_ENTRIES

    def __post_init__(self) -> None:
        for name in ("max_sessions", "session_ttl", "file_max_age", "encodings_per_session"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"demo bound {name} must be positive, got {value!r}")


def model_label(model: DemoModel) -> str:
    """The model's entry in the menu: built-in ones say they are toys."""
    return f"{model.name}: toy, synthetic shapes" if model.builtin else model.name


def _upload_path(payload: Any) -> Optional[str]:
    """The file path in a raw ``gr.Image`` payload (the load event skips Gradio's preprocessing, so
    that an upload that is not an image reaches the handler, which reports it, instead of failing
    inside Gradio with a bare "Error"). Gradio has already checked that the file is an upload in
    its own cache folder."""
    if isinstance(payload, dict):
        path = payload.get("path")
        return str(path) if path else None
    return str(payload) if isinstance(payload, str) and payload else None


def _settings(
    model: str,
    keep_ratio: Optional[float],
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


def _toast(view: View) -> None:
    """A toast for a note about the input (a converted or downscaled image).

    Errors get no toast: Gradio titles every warning toast "Warning", whatever the title passed,
    so an error is shown in the message line instead, above the (emptied) picture, as
    "Error: <what failed>: <why>"."""
    if view.level == "warning" and view.message:
        gr.Info(view.message.replace("\n\n", " ").replace("\n- ", " "), title="Note")


def _view_outputs(session: DemoSession, view: View, settings: Settings) -> Tuple[Any, ...]:
    """(state, canvas, compare canvas, compare text, mask choice, gallery, downloads, cost,
    message)."""
    _toast(view)
    choices = [(label, i) for i, label in enumerate(view.choices)]
    text = f"**Error:** {view.message}" if view.level == "error" else view.message
    return (
        session,
        view.canvas,
        gr.Image(value=view.compare_canvas, visible=settings.compare),
        gr.Markdown(value=view.compare_text, visible=settings.compare),
        gr.Radio(choices=choices, value=view.choice, visible=bool(choices)),
        gr.Gallery(value=view.masks or None, visible=bool(view.masks)),
        [str(p) for p in view.files] or None,
        view.cost,
        text,
    )


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
            raise gr.Error(f"{type(e).__name__}: {e}", title="Something went wrong") from None

    return wrapper


def make_handler(
    name: str,
    action: Action,
    extras: Sequence[str] = (),
    select: bool = False,
    outputs: Callable[[DemoSession, View, Settings], Tuple[Any, ...]] = _view_outputs,
    bounds: Bounds = Bounds(),
) -> Callable[..., Tuple[Any, ...]]:
    """The one way the page's handlers are made.

    The handler takes ``(state, *extras, m, r, md, mm, h, c, p[, evt], progress)``: the session
    state, the event's own inputs (named by ``extras``, as the API shows them), the seven controls
    (model, keep ratio, click mode, multimask, heat map, compare, compare partner), Gradio's
    ``SelectData`` when ``select``, and Gradio's progress tracker. It calls
    ``action(session, settings, report, *extra values[, evt])`` and returns ``outputs(session,
    view, settings)``. The signature is declared explicitly so that Gradio sees the parameters it
    injects and the API keeps these names.
    """
    n = len(extras)

    def handler(*args: Any) -> Tuple[Any, ...]:
        state_value, values = args[0], args[1 : 1 + n]
        controls = args[1 + n : 1 + n + len(CONTROLS)]
        rest = args[1 + n + len(CONTROLS) :]
        if isinstance(state_value, DemoSession):
            session = state_value
        else:
            session = DemoSession(cache_entries=bounds.encodings_per_session)
        settings = _settings(*controls)
        tracker = rest[-1]

        def report(fraction: Optional[float], text: str) -> None:
            tracker(fraction, desc=text)  # None: Gradio shows the text and the elapsed time

        event = rest[:-1] if select else ()
        return outputs(session, action(session, settings, report, *values, *event), settings)

    plain = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = [inspect.Parameter("state_value", plain)]
    params += [inspect.Parameter(e, plain) for e in extras + CONTROLS]
    annotations: Dict[str, Any] = {}
    if select:
        params.append(inspect.Parameter("evt", plain))
        annotations["evt"] = gr.SelectData
    params.append(inspect.Parameter("progress", plain, default=gr.Progress()))
    handler.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    handler.__annotations__ = annotations
    handler.__name__ = handler.__qualname__ = name
    return _guarded(handler)


def _busy(what: str) -> Callable[[str, float], str]:
    """A quick first step for a slow event: the message line says what is running at once."""

    def message(model: str, ratio: float) -> str:
        doing = what.format(model=model, ratio=float(ratio if ratio is not None else 0.5))
        return f"**Working:** {doing} (the time so far shows on the picture)."

    return message


def _close_session(state_value: Any) -> None:
    if isinstance(state_value, DemoSession):
        state_value.close()


def build_demo(
    models: Dict[str, DemoModel],
    examples_dir: Optional[Path] = None,
    export_dir: Optional[Path] = None,
    bounds: Bounds = Bounds(),
) -> gr.Blocks:
    """The page. ``models`` are shared by all sessions (read-only); each session has its own
    :class:`DemoSession` in ``gr.State``, bounded by ``bounds``. Launch with
    ``state_session_capacity=bounds.max_sessions`` (see :func:`launch_options`)."""
    controller = DemoController(models, export_dir)
    default = controller.default_model()
    default_model = models[default]
    names = list(models)
    examples = sorted(examples_dir.glob("*.png")) if examples_dir and examples_dir.is_dir() else []
    delete_cache = (min(bounds.file_max_age, 600), bounds.file_max_age)

    with gr.Blocks(
        title="big.LITTLE SAM demo", analytics_enabled=False, delete_cache=delete_cache
    ) as demo:
        state = gr.State(None, time_to_live=bounds.session_ttl, delete_callback=_close_session)
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
                    gr.Examples([str(p) for p in examples], inputs=[image_input], label="Examples")
                model = gr.Dropdown(
                    [(model_label(m), name) for name, m in models.items()],
                    value=default,
                    label="Model",
                    elem_id="model",
                )
                if any(m.builtin for m in models.values()):
                    gr.Markdown(TOY_NOTE, elem_id="toy-note")
                keep_ratio = gr.Slider(
                    0.05,
                    1.0,
                    value=default_model.default_keep_ratio,
                    step=0.05,
                    label="Keep ratio: share of tokens through the big blocks (big.LITTLE); "
                    "encodes when released",
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
                    label="Downloads",
                    file_count="multiple",
                    interactive=False,
                    height=120,
                    elem_id="downloads",
                )
            with gr.Column(scale=2, min_width=480):
                message = gr.Markdown(NO_IMAGE, elem_id="message")
                with gr.Row():
                    canvas = gr.Image(
                        label="Click on the image",
                        show_label=False,  # a label would hide the top of a long, thin image
                        type="numpy",
                        format="png",
                        interactive=False,
                        elem_id="canvas",
                    )
                    compare_canvas = gr.Image(
                        label="Compare model",
                        show_label=False,
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
                    label="Candidate masks",
                    columns=3,
                    height="auto",
                    object_fit="contain",
                    visible=False,
                    format="png",
                    elem_id="gallery",
                )
                cost = gr.Markdown(elem_id="cost")
                # For API clients: prompts as JSON in image pixels (see the prompts handler).
                api_prompts = gr.Textbox(visible=False, label="Prompts (JSON)")

        controls = [model, keep_ratio, mode, multimask, heat, compare, partner]
        view_outputs = [
            state, canvas, compare_canvas, compare_text, choice, gallery, files, cost, message,
        ]  # fmt: skip
        c = controller

        def on_load(s: DemoSession, st: Settings, report: ProgressFn, payload: Any) -> View:
            path = _upload_path(payload)
            if path is not None and path not in image_input.keep_in_cache:
                s.uploads.append(Path(path))  # an upload, not an example: deleted with s
            return c.load(s, path, st, report)

        def on_click(s: DemoSession, st: Settings, report: ProgressFn, evt: Any) -> View:
            index = evt.index if isinstance(evt.index, (list, tuple)) else None
            if s.image is None or index is None or len(index) != 2:
                return View(canvas=None, message=NO_IMAGE, level="warning")
            return c.click(s, st, float(index[0]), float(index[1]), report)

        def on_model(s: DemoSession, st: Settings, report: ProgressFn) -> View:
            chosen = c.model(st.model)
            st.keep_ratio = chosen.default_keep_ratio
            return c.refresh(s, st, f"Model: {chosen.name}.", report)

        def model_outputs(s: DemoSession, view: View, st: Settings) -> Tuple[Any, ...]:
            chosen = c.model(st.model)
            slider = gr.Slider(value=chosen.default_keep_ratio, interactive=chosen.is_biglittle)
            return (slider,) + _view_outputs(s, view, st)

        def on_choose(s: DemoSession, st: Settings, report: ProgressFn, index: Any) -> View:
            if index is None:
                return c.refresh(s, st, progress=report)
            return c.choose(s, st, int(index))

        def on_gallery(s: DemoSession, st: Settings, report: ProgressFn, evt: Any) -> View:
            return c.choose(s, st, evt.index if isinstance(evt.index, int) else 0)

        def on_everything(
            s: DemoSession, st: Settings, report: ProgressFn, pps: float, iou: float, stab: float
        ) -> View:
            return c.everything(s, st, int(pps), report, iou, stab)

        def on_prompts(s: DemoSession, st: Settings, report: ProgressFn, text: str) -> View:
            """Add prompts in image pixels: {"points": [[x, y, 1 or 0], ...], "box": [x0, y0, x1,
            y1]} (both optional; label 1 positive, 0 negative)."""
            try:
                points, box = parse_prompts_json(text)
            except ValueError as e:
                return View(canvas=None, message=f"Bad prompts: {e}", level="error")
            return c.add_prompts(s, st, points, box, report)

        def export_outputs(s: DemoSession, view: View, st: Settings) -> Tuple[Any, ...]:
            _toast(view)
            return (s, [str(p) for p in view.files] or None, view.message)

        def handler(name: str, action: Action, **kwargs: Any) -> Callable[..., Tuple[Any, ...]]:
            return make_handler(name, action, bounds=bounds, **kwargs)

        def wire(
            trigger: Callable[..., Any],
            fn: Callable[..., Tuple[Any, ...]],
            extra_inputs: Sequence[Any] = (),
            api_name: Any = False,
            outputs: Sequence[Any] = tuple(view_outputs),
            busy: Optional[str] = None,
            **options: Any,
        ) -> None:
            """Wire one event: ``fn`` gets the state, ``extra_inputs`` and the controls. ``busy``
            (a slow event): first, at once, the message line says what runs; the progress and
            the time so far show on the picture only, so that line stays readable."""
            inputs = [state, *extra_inputs, *controls]
            if busy is not None:
                trigger = trigger(
                    _busy(busy),
                    [model, keep_ratio],
                    message,
                    queue=False,
                    api_name=False,
                    show_progress="hidden",
                ).then
            trigger(
                fn, inputs, list(outputs), show_progress_on=canvas, api_name=api_name, **options
            )

        refresh = handler("on_refresh", lambda s, st, report: c.refresh(s, st, progress=report))
        wire(
            image_input.change,
            handler("on_load", on_load, extras=("payload",)),
            [image_input],
            "load_image",
            busy="loading the image and running the image encoder of {model}",
            preprocess=False,  # see _upload_path
        )
        wire(canvas.select, handler("on_click", on_click, select=True), api_name="click")
        wire(undo.click, handler("on_undo", lambda s, st, r: c.undo(s, st, r)), api_name="undo")
        wire(clear.click, handler("on_clear", lambda s, st, r: c.clear(s, st)), api_name="clear")
        wire(
            model.input,
            handler("on_model", on_model, outputs=model_outputs),
            api_name="model",
            outputs=[keep_ratio, *view_outputs],
            busy="switching to {model} (its encoder runs once per image)",
        )
        # Encode on release only: dragging through 0.45, 0.40 ... would encode at each value.
        wire(
            keep_ratio.release,
            refresh,
            api_name="keep_ratio",
            busy="encoding with {model} at keep ratio {ratio:.2f}",
        )
        for control in (multimask, heat, compare, partner, mode):
            wire(control.input, refresh)
        wire(
            choice.input,
            handler("on_choose", on_choose, extras=("index",)),
            [choice],
            "choose",
        )
        wire(gallery.select, handler("on_gallery", on_gallery, select=True))
        wire(
            everything.click,
            handler("on_everything", on_everything, extras=("pps", "iou", "stability")),
            [points_per_side, min_iou, min_stability],
            "everything",
            busy="segment everything with {model}",
        )
        wire(
            api_prompts.submit,
            handler("on_prompts", on_prompts, extras=("text",)),
            [api_prompts],
            "prompts",
        )
        wire(
            export.click,
            handler("on_export", lambda s, st, r: c.export(s, st)[1], outputs=export_outputs),
            api_name="export",
            outputs=[state, files, message],
        )
    return demo


def launch_options(bounds: Bounds) -> Dict[str, Any]:
    """The ``Blocks.launch`` settings that bound the server: the session cap."""
    return {"state_session_capacity": bounds.max_sessions}
