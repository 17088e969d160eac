"""What the page shows for a session: the canvases, the candidate thumbnails, the cost table and
the comparison text, built into one :class:`View`."""

from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np

from .catalog import ModelCatalog, size_mismatch
from .engine import EncodedImage, Prediction, mask_iou
from .models import DemoModel
from .render import (
    MASK_COLOURS,
    draw_everything,
    draw_heat,
    draw_mask,
    draw_prompts,
    resize_for_display,
)
from .session import NO_IMAGE, DemoSession, Settings, View

__all__ = ["THUMB_SIDE", "build_view"]

THUMB_SIDE = 256


def _canvas(
    session: DemoSession,
    prediction: Optional[Prediction],
    encoded: Optional[EncodedImage],
    heat: bool,
    colour: Tuple[int, int, int],
) -> np.ndarray:
    """The display image with the heat map, the masks and the prompts drawn on it."""
    assert session.display is not None
    canvas = session.display
    if heat and encoded is not None and encoded.usage_grid is not None:
        canvas = draw_heat(canvas, encoded.usage_at(canvas.shape[:2]))
    if session.everything is not None and prediction is None:
        canvas = draw_everything(canvas, session.everything)
    if prediction is not None:
        i = min(session.choice, len(prediction.masks) - 1)
        canvas = draw_mask(canvas, prediction.masks[i], colour)
    return draw_prompts(canvas, session.prompts, session.canvas_scale)


def _thumbnails(session: DemoSession) -> Tuple[List[Tuple[np.ndarray, str]], List[str]]:
    prediction = session.prediction
    if prediction is None or session.display is None:
        return [], []
    side = max(session.display.shape[:2])
    small = resize_for_display(session.display, min(1.0, THUMB_SIDE / side))
    thumbs, labels = [], []
    for i, (mask, score) in enumerate(zip(prediction.masks, prediction.scores)):
        label = f"Mask {i + 1}: predicted IoU {score:.2f}"
        thumbs.append((draw_mask(small, mask, MASK_COLOURS[0]), label))
        labels.append(label)
    return thumbs, labels


def _measured_speedup(
    catalog: ModelCatalog,
    session: DemoSession,
    model: DemoModel,
    encoded: Optional[EncodedImage],
) -> str:
    if encoded is None:
        return ""
    for (name, _), other in session.cache.items():
        candidate = catalog.models.get(name)
        if candidate is not None and model.same_size_as(candidate):
            return (
                f"**{other.seconds / max(encoded.seconds, 1e-9):.2f}x** "
                f"({other.seconds * 1000:.0f} ms for {name}, on this image)"
            )
    return ""


def _cost(catalog: ModelCatalog, session: DemoSession, settings: Settings) -> str:
    """The cost table (markdown): encoder and decoder time, GMACs, and the speedup."""
    model = catalog.model(settings.model)
    ratio = catalog.ratio(model, settings)
    encoded = session.cache.get((model.name, ratio))
    rows = [("model", f"{model.name}: {model.describe()}")]
    if model.is_biglittle:
        rows.append(("keep ratio", f"{ratio:.2f} of the tokens take the big blocks"))
    if encoded is not None:
        cached = (
            session.last_encode is not None
            and session.last_encode[:2] == (model.name, ratio)
            and session.last_encode[3]
        )
        note = " (cached: clicks reuse it)" if cached else " (this image)"
        rows.append(("encoder time", f"{encoded.seconds * 1000:.0f} ms{note}"))
    if session.prediction is not None:
        rows.append(("decoder time", f"{session.prediction.seconds * 1000:.1f} ms (last prompt)"))
    elif session.everything is not None:
        rows.append(("segment everything", f"{session.everything_seconds:.2f} s"))
    if settings.heat and encoded is not None and encoded.usage_grid is not None:
        assert session.display is not None
        mean = float(encoded.usage_at(session.display.shape[:2]).mean())
        rows.append(
            (
                "heat map",
                "bright: the token took the big blocks in most layers; dark: LITTLE only "
                f"(mean {mean:.2f})",
            )
        )
    gmacs = model.gmacs(ratio)
    teacher = model.teacher_gmacs()
    rows.append(
        (
            "encoder GMACs",
            f"{gmacs:.3g}" + (f" at keep ratio {ratio:.2f}" if model.is_biglittle else ""),
        )
    )
    if model.is_biglittle:
        rows.append(
            (
                "vs SAM encoder of the same size",
                f"{teacher:.3g} GMACs: **{teacher / gmacs:.2f}x** fewer MACs",
            )
        )
        measured = _measured_speedup(catalog, session, model, encoded)
        rows.append(
            (
                "measured encoder speedup",
                measured or "turn on Compare with a plain SAM of this size",
            )
        )
    lines = ["| cost | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines)


def _compare_into(
    catalog: ModelCatalog, view: View, session: DemoSession, settings: Settings
) -> None:
    """Fill the comparison canvas and text; the text warns first when the two models are not the
    same size."""
    partner = catalog.compare_partner(settings)
    if partner is None:
        view.compare_text = (
            "Compare needs a second model of the other kind (plain SAM vs big.LITTLE); "
            "start the demo with --sam-checkpoint or --checkpoint to add one."
        )
        return
    other = catalog.models[partner]
    encoded = session.cache.get((partner, catalog.ratio(other, settings)))
    prediction = session.compare_prediction if session.compare_model == partner else None
    view.compare_canvas = _canvas(session, prediction, encoded, False, MASK_COLOURS[1])
    mismatch = size_mismatch(catalog.model(settings.model), other)
    warning = f"**Not the same size.** {mismatch}.\n\n" if mismatch else ""
    main = session.prediction
    if prediction is None or main is None:
        view.compare_text = warning + f"**{partner}**: click on the image to compare masks."
    else:
        i = min(session.choice, len(main.masks) - 1, len(prediction.masks) - 1)
        iou = mask_iou(main.masks[i], prediction.masks[i])
        view.compare_text = warning + (
            f"**{partner}** (right, orange) vs **{settings.model}** (left, blue), mask {i + 1}: "
            f"IoU between the masks **{iou:.3f}**; predicted IoU {prediction.scores[i]:.2f} vs "
            f"{main.scores[i]:.2f}; decoder {prediction.seconds * 1000:.1f} ms"
        )


def build_view(
    catalog: ModelCatalog,
    session: DemoSession,
    settings: Settings,
    message: str = "",
    level: str = "info",
    notes: Optional[List[str]] = None,
) -> View:
    """Everything the page shows for ``session`` under ``settings``, with ``message`` and any
    notes (which raise an "info" level to "warning")."""
    if session.image is None or session.display is None:
        return View(canvas=None, message=NO_IMAGE, level="warning")
    model = catalog.model(settings.model)
    encoded = session.cache.get((model.name, catalog.ratio(model, settings)))
    prediction = session.prediction if session.prediction_model == model.name else None
    canvas = _canvas(session, prediction, encoded, settings.heat, MASK_COLOURS[0])
    notes = list(notes or [])
    if settings.heat and not model.is_biglittle:
        notes.append("heat map: plain SAM sends every token through every block")
    masks, labels = _thumbnails(session)
    view = View(canvas=canvas, masks=masks, choices=labels, cost=_cost(catalog, session, settings))
    view.choice = session.choice if labels else None
    if settings.compare:
        _compare_into(catalog, view, session, settings)
    if notes and level == "info":
        level = "warning"
    all_notes = list(session.image.notes) + [n for n in notes if n not in session.image.notes]
    text = message
    if all_notes:
        text = (text + "\n\n" if text else "") + "\n".join(f"- Note: {n}" for n in all_notes)
    view.message = text
    view.level = level
    return view
