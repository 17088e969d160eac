"""The demo page's layout: its texts, its components and where they sit.

:func:`build_layout` places the components inside an open ``gr.Blocks`` and returns them as a
:class:`Layout`; :mod:`.page` wires their events to the handlers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Sequence

import gradio as gr

from .models import DemoModel
from .session import MODE_POSITIVE, MODES, NO_IMAGE

__all__ = ["AUTO_PARTNER", "INTRO", "TOY_NOTE", "Layout", "build_layout", "model_label"]

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


def model_label(model: DemoModel) -> str:
    """The model's entry in the menu: built-in ones say they are toys."""
    return f"{model.name}: toy, synthetic shapes" if model.builtin else model.name


@dataclass(frozen=True)
class Layout:
    """The page's components that events read or write (static texts are left out)."""

    # Left column: the image, the model and the prompt controls.
    image_input: gr.Image
    model: gr.Dropdown
    keep_ratio: gr.Slider
    mode: gr.Radio
    undo: gr.Button
    clear: gr.Button
    multimask: gr.Checkbox
    heat: gr.Checkbox
    compare: gr.Checkbox
    partner: gr.Dropdown
    points_per_side: gr.Slider
    min_iou: gr.Slider
    min_stability: gr.Slider
    everything: gr.Button
    export: gr.Button
    files: gr.File
    # Right column: what the page shows.
    message: gr.Markdown
    canvas: gr.Image
    compare_canvas: gr.Image
    compare_text: gr.Markdown
    choice: gr.Radio
    gallery: gr.Gallery
    cost: gr.Markdown
    api_prompts: gr.Textbox  # hidden: prompts as JSON for API clients

    @property
    def controls(self) -> List[Any]:
        """The seven controls every handler receives, in the order of ``page.CONTROLS``."""
        return [
            self.model,
            self.keep_ratio,
            self.mode,
            self.multimask,
            self.heat,
            self.compare,
            self.partner,
        ]


def build_layout(models: Dict[str, DemoModel], default: str, examples: Sequence[Path]) -> Layout:
    """Place the page's components (inside an open ``gr.Blocks``, after the session state):
    the intro, then the controls on the left and the picture and its results on the right."""
    gr.Markdown(INTRO)
    with gr.Row():
        with gr.Column(scale=1, min_width=320):
            left = _image_and_model(models, default, examples)
            left.update(_prompt_controls(list(models), models[default]))
        with gr.Column(scale=2, min_width=480):
            right = _results()
    return Layout(**left, **right)


def _image_and_model(
    models: Dict[str, DemoModel], default: str, examples: Sequence[Path]
) -> Dict[str, Any]:
    """The image input with its examples, the model menu and the keep ratio slider."""
    default_model = models[default]
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
    return {"image_input": image_input, "model": model, "keep_ratio": keep_ratio}


def _prompt_controls(names: List[str], default_model: DemoModel) -> Dict[str, Any]:
    """What a click adds, undo and clear, the view options, segment everything and downloads."""
    mode = gr.Radio(list(MODES), value=MODE_POSITIVE, label="Click adds", elem_id="mode")
    with gr.Row():
        undo = gr.Button("Undo last prompt", elem_id="undo")
        clear = gr.Button("Clear all", elem_id="clear")
    multimask = gr.Checkbox(True, label="Multimask output: 3 masks to choose from")
    heat = gr.Checkbox(False, label="Heat map: where the big blocks spent compute")
    compare = gr.Checkbox(False, label="Compare: plain SAM and big.LITTLE side by side")
    partner = gr.Dropdown([AUTO_PARTNER] + names, value=AUTO_PARTNER, label="Compare with")
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
    return {
        "mode": mode,
        "undo": undo,
        "clear": clear,
        "multimask": multimask,
        "heat": heat,
        "compare": compare,
        "partner": partner,
        "points_per_side": points_per_side,
        "min_iou": min_iou,
        "min_stability": min_stability,
        "everything": everything,
        "export": export,
        "files": files,
    }


def _results() -> Dict[str, Any]:
    """The message line, the clickable canvas (and the compare canvas), the candidate masks and
    the cost table."""
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
    choice = gr.Radio([], label="Candidate masks (predicted IoU)", visible=False, elem_id="choice")
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
    return {
        "message": message,
        "canvas": canvas,
        "compare_canvas": compare_canvas,
        "compare_text": compare_text,
        "choice": choice,
        "gallery": gallery,
        "cost": cost,
        "api_prompts": api_prompts,
    }
