"""The demo's Gradio page: its events, one handler factory for every event, and the bounds on
what the server keeps per user. The components and where they sit are in :mod:`.layout`.

Each handler turns the page's values into a :class:`Settings` and a :class:`DemoSession`, calls one
:class:`DemoController` action, and turns its :class:`View` into component updates.
"""

from __future__ import annotations

import functools
import inspect
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import gradio as gr

from .controller import DemoController
from .layout import AUTO_PARTNER, INTRO, TOY_NOTE, Layout, build_layout, model_label
from .models import DemoModel
from .prompts import parse_prompts_json
from .session import MODE_POSITIVE, MODES, NO_IMAGE, DemoSession, ProgressFn, Settings, View
from .settings import Bounds

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
# The seven controls every handler receives, by the parameter names the API shows.
CONTROLS = ("m", "r", "md", "mm", "h", "c", "p")
Action = Callable[..., View]  # (session, settings, report, *extra values) -> View


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


class _PageActions:
    """The page's own steps around the controller's actions: each takes ``(session, settings,
    report, *event values)`` and returns the :class:`View` of one controller call."""

    def __init__(self, controller: DemoController, image_input: gr.Image) -> None:
        self.c = controller
        self.image_input = image_input  # its examples stay in Gradio's cache; uploads do not

    def on_load(self, s: DemoSession, st: Settings, report: ProgressFn, payload: Any) -> View:
        path = _upload_path(payload)
        if path is not None and path not in self.image_input.keep_in_cache:
            s.add_upload(Path(path))  # an upload, not an example: deleted with s
        return self.c.load(s, path, st, report)

    def on_click(self, s: DemoSession, st: Settings, report: ProgressFn, evt: Any) -> View:
        index = evt.index if isinstance(evt.index, (list, tuple)) else None
        if s.image is None or index is None or len(index) != 2:
            return View(canvas=None, message=NO_IMAGE, level="warning")
        return self.c.click(s, st, float(index[0]), float(index[1]), report)

    def on_model(self, s: DemoSession, st: Settings, report: ProgressFn) -> View:
        chosen = self.c.model(st.model)
        st.keep_ratio = chosen.default_keep_ratio
        return self.c.refresh(s, st, f"Model: {chosen.name}.", report)

    def model_outputs(self, s: DemoSession, view: View, st: Settings) -> Tuple[Any, ...]:
        """The keep ratio slider (the new model's default; fixed for plain SAM), then the view."""
        chosen = self.c.model(st.model)
        slider = gr.Slider(value=chosen.default_keep_ratio, interactive=chosen.is_biglittle)
        return (slider,) + _view_outputs(s, view, st)

    def on_refresh(self, s: DemoSession, st: Settings, report: ProgressFn) -> View:
        return self.c.refresh(s, st, progress=report)

    def on_undo(self, s: DemoSession, st: Settings, report: ProgressFn) -> View:
        return self.c.undo(s, st, report)

    def on_clear(self, s: DemoSession, st: Settings, report: ProgressFn) -> View:
        return self.c.clear(s, st)

    def on_choose(self, s: DemoSession, st: Settings, report: ProgressFn, index: Any) -> View:
        if index is None:
            return self.c.refresh(s, st, progress=report)
        return self.c.choose(s, st, int(index))

    def on_gallery(self, s: DemoSession, st: Settings, report: ProgressFn, evt: Any) -> View:
        return self.c.choose(s, st, evt.index if isinstance(evt.index, int) else 0)

    def on_everything(
        self, s: DemoSession, st: Settings, report: ProgressFn, pps: float, iou: float, stab: float
    ) -> View:
        return self.c.everything(s, st, int(pps), report, iou, stab)

    def on_prompts(self, s: DemoSession, st: Settings, report: ProgressFn, text: str) -> View:
        """Add prompts in image pixels: {"points": [[x, y, 1 or 0], ...], "box": [x0, y0, x1,
        y1]} (both optional; label 1 positive, 0 negative)."""
        try:
            points, box = parse_prompts_json(text)
        except ValueError as e:
            return View(canvas=None, message=f"Bad prompts: {e}", level="error")
        return self.c.add_prompts(s, st, points, box, report)

    def on_export(self, s: DemoSession, st: Settings, report: ProgressFn) -> View:
        return self.c.export(s, st)[1]

    @staticmethod
    def export_outputs(s: DemoSession, view: View, st: Settings) -> Tuple[Any, ...]:
        """(state, downloads, message): an export leaves the picture as it is."""
        _toast(view)
        return (s, [str(p) for p in view.files] or None, view.message)


@dataclass(frozen=True)
class _Wiring:
    """Wires one page's events: every handler gets the session state, the event's own inputs and
    the seven controls, and by default shows its :class:`View` in :attr:`view_outputs`."""

    state: gr.State
    layout: Layout
    bounds: Bounds

    @property
    def view_outputs(self) -> List[Any]:
        """The components :func:`_view_outputs` fills, in its order."""
        p = self.layout
        return [
            self.state, p.canvas, p.compare_canvas, p.compare_text, p.choice, p.gallery, p.files,
            p.cost, p.message,
        ]  # fmt: skip

    def handler(self, name: str, action: Action, **kwargs: Any) -> Callable[..., Tuple[Any, ...]]:
        """:func:`make_handler` under this page's bounds."""
        return make_handler(name, action, bounds=self.bounds, **kwargs)

    def wire(
        self,
        trigger: Callable[..., Any],
        fn: Callable[..., Tuple[Any, ...]],
        extra_inputs: Sequence[Any] = (),
        api_name: Any = False,
        outputs: Optional[Sequence[Any]] = None,
        busy: Optional[str] = None,
        **options: Any,
    ) -> None:
        """Wire one event: ``fn`` gets the state, ``extra_inputs`` and the controls. ``busy``
        (a slow event): first, at once, the message line says what runs; the progress and
        the time so far show on the picture only, so that line stays readable."""
        p = self.layout
        inputs = [self.state, *extra_inputs, *p.controls]
        if busy is not None:
            trigger = trigger(
                _busy(busy),
                [p.model, p.keep_ratio],
                p.message,
                queue=False,
                api_name=False,
                show_progress="hidden",
            ).then
        outputs = self.view_outputs if outputs is None else outputs
        trigger(fn, inputs, list(outputs), show_progress_on=p.canvas, api_name=api_name, **options)


def _wire_events(w: _Wiring, a: _PageActions) -> None:
    """Every event of the page, in the order Gradio numbers them (and the API lists them)."""
    p, handler, wire = w.layout, w.handler, w.wire
    refresh = handler("on_refresh", a.on_refresh)
    wire(
        p.image_input.change,
        handler("on_load", a.on_load, extras=("payload",)),
        [p.image_input],
        "load_image",
        busy="loading the image and running the image encoder of {model}",
        preprocess=False,  # see _upload_path
    )
    wire(p.canvas.select, handler("on_click", a.on_click, select=True), api_name="click")
    wire(p.undo.click, handler("on_undo", a.on_undo), api_name="undo")
    wire(p.clear.click, handler("on_clear", a.on_clear), api_name="clear")
    wire(
        p.model.input,
        handler("on_model", a.on_model, outputs=a.model_outputs),
        api_name="model",
        outputs=[p.keep_ratio, *w.view_outputs],
        busy="switching to {model} (its encoder runs once per image)",
    )
    # Encode on release only: dragging through 0.45, 0.40 ... would encode at each value.
    wire(
        p.keep_ratio.release,
        refresh,
        api_name="keep_ratio",
        busy="encoding with {model} at keep ratio {ratio:.2f}",
    )
    for control in (p.multimask, p.heat, p.compare, p.partner, p.mode):
        wire(control.input, refresh)
    wire(p.choice.input, handler("on_choose", a.on_choose, extras=("index",)), [p.choice], "choose")
    wire(p.gallery.select, handler("on_gallery", a.on_gallery, select=True))
    wire(
        p.everything.click,
        handler("on_everything", a.on_everything, extras=("pps", "iou", "stability")),
        [p.points_per_side, p.min_iou, p.min_stability],
        "everything",
        busy="segment everything with {model}",
    )
    wire(
        p.api_prompts.submit,
        handler("on_prompts", a.on_prompts, extras=("text",)),
        [p.api_prompts],
        "prompts",
    )
    wire(
        p.export.click,
        handler("on_export", a.on_export, outputs=a.export_outputs),
        api_name="export",
        outputs=[w.state, p.files, p.message],
    )


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
    examples = sorted(examples_dir.glob("*.png")) if examples_dir and examples_dir.is_dir() else []
    delete_cache = (min(bounds.file_max_age, 600), bounds.file_max_age)
    with gr.Blocks(
        title="big.LITTLE SAM demo", analytics_enabled=False, delete_cache=delete_cache
    ) as demo:
        state = gr.State(None, time_to_live=bounds.session_ttl, delete_callback=_close_session)
        layout = build_layout(models, controller.default_model(), examples)
        _wire_events(_Wiring(state, layout, bounds), _PageActions(controller, layout.image_input))
    return demo


def launch_options(bounds: Bounds) -> Dict[str, Any]:
    """The ``Blocks.launch`` settings that bound the server: the session cap."""
    return {"state_session_capacity": bounds.max_sessions}
