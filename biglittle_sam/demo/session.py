"""Per-session state and the demo's handlers, independent of Gradio so tests can call them.

A :class:`DemoSession` belongs to one browser session (Gradio keeps one per user in ``gr.State``):
the image, the prompts, the cached encoder outputs per (model, keep ratio), and the last masks.
:class:`DemoController` holds the shared, read-only models and turns each user action into a
:class:`View`, everything the page shows.
"""

from __future__ import annotations

import functools
import json
import math
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar, Union, cast

import cv2
import numpy as np
from PIL import Image

from ..data.masks import encode_mask
from .engine import (
    EncodedImage,
    Prediction,
    decode_prompts,
    encode_image,
    mask_iou,
    segment_everything,
)
from .images import ImageLoadError, LoadedImage, load_image, normalize_image
from .models import DemoModel
from .prompts import PromptSet
from .render import (
    MASK_COLOURS,
    display_scale,
    draw_everything,
    draw_heat,
    draw_mask,
    draw_prompts,
    resize_for_display,
)

__all__ = [
    "MODE_BOX",
    "MODE_NEGATIVE",
    "MODE_POSITIVE",
    "MODES",
    "NO_IMAGE",
    "DemoController",
    "DemoSession",
    "Settings",
    "View",
]

MODE_POSITIVE = "Positive point"
MODE_NEGATIVE = "Negative point"
MODE_BOX = "Box (two corner clicks)"
MODES = (MODE_POSITIVE, MODE_NEGATIVE, MODE_BOX)
NO_IMAGE = "Load an image first: upload one, paste one, or pick an example below."
CACHE_ENTRIES = 6  # encoder outputs kept per session: a few models x keep ratios
THUMB_SIDE = 256
ProgressFn = Callable[[float, str], None]


@dataclass
class Settings:
    """The controls that shape a view.

    Attributes:
      model: menu name of the model that segments.
      keep_ratio: big.LITTLE keep ratio (ignored by plain SAM).
      mode: one of ``MODES``: what a click adds.
      multimask: three masks with predicted IoUs instead of one.
      heat: overlay where the big blocks spent their compute.
      compare: run the same prompts on a second model, side by side.
      compare_model: that model's menu name; None picks the plain SAM of the same size.
    """

    model: str
    keep_ratio: float = 0.5
    mode: str = MODE_POSITIVE
    multimask: bool = True
    heat: bool = False
    compare: bool = False
    compare_model: Optional[str] = None


@dataclass
class View:
    """Everything the page shows after an action.

    Attributes:
      canvas: the clickable picture (H' x W' x 3 uint8), or None without an image.
      masks: (thumbnail, caption) per candidate mask.
      choices: one label per candidate mask; ``choice`` is the selected index (or None).
      compare_canvas: the second model's picture when comparing, else None.
      compare_text: the IoU between the two models' masks, or why there is none.
      cost: markdown table of encoder / decoder time, GMACs and speedup.
      message: what just happened, and any note about the input.
      level: "info", "warning" or "error", so the page can also raise a toast.
    """

    canvas: Optional[np.ndarray]
    masks: List[Tuple[np.ndarray, str]] = field(default_factory=list)
    choices: List[str] = field(default_factory=list)
    choice: Optional[int] = None
    compare_canvas: Optional[np.ndarray] = None
    compare_text: str = ""
    cost: str = ""
    message: str = ""
    level: str = "info"


@dataclass
class DemoSession:
    """One user's state. Nothing in it is shared with other sessions."""

    image: Optional[LoadedImage] = None
    display: Optional[np.ndarray] = None  # the image at canvas size
    scale: float = 1.0  # canvas pixels per image pixel
    prompts: PromptSet = field(default_factory=PromptSet)
    cache: "OrderedDict[Tuple[str, float], EncodedImage]" = field(default_factory=OrderedDict)
    prediction: Optional[Prediction] = None
    prediction_model: Optional[str] = None
    choice: int = 0
    compare_prediction: Optional[Prediction] = None
    compare_model: Optional[str] = None
    everything: Optional[List[Dict[str, Any]]] = None
    everything_seconds: float = 0.0
    everything_key: Optional[Tuple[str, float]] = None  # (model, keep ratio) that made them
    last_encode: Optional[Tuple[str, float, float, bool]] = None  # model, ratio, seconds, cached
    # One action at a time per session: Gradio may run two of a user's events at once (two quick
    # toggles), and both would change this object.
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)

    def reset_outputs(self) -> None:
        self.prediction = None
        self.prediction_model = None
        self.compare_prediction = None
        self.compare_model = None
        self.everything = None
        self.choice = 0


F = TypeVar("F", bound=Callable[..., Any])


def _one_at_a_time(method: F) -> F:
    """Hold the session's lock (the first argument after ``self``) while ``method`` runs."""

    @functools.wraps(method)
    def wrapper(self: "DemoController", session: DemoSession, *args: Any, **kwargs: Any) -> Any:
        with session.lock:
            return method(self, session, *args, **kwargs)

    return cast(F, wrapper)


def _ratio_key(ratio: float) -> float:
    return round(float(ratio), 4)


class DemoController:
    """The demo's actions. Each returns a :class:`View`; none raises on a user's mistake."""

    def __init__(self, models: Dict[str, DemoModel], export_dir: Optional[Path] = None) -> None:
        if not models:
            raise ValueError("the demo needs at least one model")
        self.models = models
        self.export_root = Path(export_dir) if export_dir is not None else None

    # ----------------------------------------------------------------------------- model helpers
    def model(self, name: Optional[str]) -> DemoModel:
        if name in self.models:
            return self.models[name]  # type: ignore[index]
        return self.models[self.default_model()]

    def default_model(self) -> str:
        """The first big.LITTLE model, else the first model."""
        for name, model in self.models.items():
            if model.is_biglittle:
                return name
        return next(iter(self.models))

    def compare_partner(self, settings: Settings) -> Optional[str]:
        """The model to compare with: the one asked for, else plain SAM of the same size, else
        any model of the other kind."""
        main = self.model(settings.model)
        wanted = settings.compare_model
        if wanted in self.models and wanted != main.name:
            return wanted
        others = [m for m in self.models.values() if m.is_biglittle != main.is_biglittle]
        if not others:
            return None
        if main.is_biglittle:
            same = [m for m in others if main.same_size_as(m)]
        else:
            same = [m for m in others if m.same_size_as(main)]
        return (same or others)[0].name

    def _ratio(self, model: DemoModel, settings: Settings) -> float:
        return _ratio_key(settings.keep_ratio) if model.is_biglittle else 1.0

    def _encoded(self, session: DemoSession, model: DemoModel, ratio: float) -> EncodedImage:
        """The cached encoder output, or a fresh encoder pass (then cached, oldest dropped)."""
        assert session.image is not None
        key = (model.name, ratio)
        hit = session.cache.get(key)
        if hit is not None:
            session.cache.move_to_end(key)
            session.last_encode = (model.name, ratio, hit.seconds, True)
            return hit
        encoded = encode_image(model, session.image.rgb, ratio)
        session.cache[key] = encoded
        while len(session.cache) > CACHE_ENTRIES:
            session.cache.popitem(last=False)
        session.last_encode = (model.name, ratio, encoded.seconds, False)
        return encoded

    # ----------------------------------------------------------------------------------- actions
    @_one_at_a_time
    def load(
        self,
        session: DemoSession,
        source: Union[None, str, Path, np.ndarray, Image.Image],
        settings: Settings,
    ) -> View:
        """A new image (a file path, an array or a PIL image); None clears the image."""
        session.cache.clear()
        session.prompts.clear()
        session.reset_outputs()
        if source is None:
            session.image = session.display = None
            return View(canvas=None, message=NO_IMAGE)
        try:
            if isinstance(source, (str, Path)):
                image = load_image(source)
            else:
                image = normalize_image(source)
        except ImageLoadError as e:
            session.image = session.display = None
            return View(canvas=None, message=f"Could not load the image: {e}", level="error")
        session.image = image
        session.scale = display_scale(*image.rgb.shape[:2])
        session.display = resize_for_display(image.rgb, session.scale)
        model = self.model(settings.model)
        self._encoded(session, model, self._ratio(model, settings))
        h, w = image.rgb.shape[:2]
        notes = image.notes
        message = f"Loaded {image.name} ({w} x {h}). Click on an object to segment it."
        return self._view(session, settings, message, "warning" if notes else "info", notes)

    @_one_at_a_time
    def click(self, session: DemoSession, settings: Settings, x: float, y: float) -> View:
        """A click at canvas pixel (x, y): adds a point or a box corner, then decodes."""
        if session.image is None:
            return View(canvas=None, message=NO_IMAGE, level="warning")
        h, w = session.image.rgb.shape[:2]
        ix, iy = float(x) / session.scale, float(y) / session.scale
        if not (math.isfinite(ix) and math.isfinite(iy) and 0 <= ix < w and 0 <= iy < h):
            return self._view(
                session,
                settings,
                f"Ignored a click at ({x:.0f}, {y:.0f}): it is outside the image.",
                "warning",
            )
        session.everything = None
        if settings.mode == MODE_BOX:
            if not session.prompts.add_corner(ix, iy):
                return self._view(session, settings, "Box: now click the opposite corner.")
        else:
            session.prompts.add_point(ix, iy, positive=settings.mode != MODE_NEGATIVE)
        return self._predict(session, settings)

    @_one_at_a_time
    def add_prompts(
        self,
        session: DemoSession,
        settings: Settings,
        points: Sequence[Tuple[float, float, bool]] = (),
        box: Optional[Tuple[float, float, float, float]] = None,
    ) -> View:
        """Add points (x, y, positive) and a box in image pixels at once, ignoring those outside."""
        if session.image is None:
            return View(canvas=None, message=NO_IMAGE, level="warning")
        h, w = session.image.rgb.shape[:2]
        ignored = 0
        for px, py, positive in points:
            if 0 <= px < w and 0 <= py < h:
                session.prompts.add_point(px, py, positive)
            else:
                ignored += 1
        if box is not None:
            x0, y0, x1, y1 = box
            if max(x0, x1) < 0 or max(y0, y1) < 0 or min(x0, x1) >= w or min(y0, y1) >= h:
                ignored += 1
            else:
                clip_x = (min(max(x0, 0), w - 1), min(max(x1, 0), w - 1))
                clip_y = (min(max(y0, 0), h - 1), min(max(y1, 0), h - 1))
                session.prompts.pending_corner = None
                session.prompts.add_corner(clip_x[0], clip_y[0])
                session.prompts.add_corner(clip_x[1], clip_y[1])
        session.everything = None
        notes = [f"{ignored} prompt(s) outside the image were ignored"] if ignored else []
        return self._predict(session, settings, notes)

    @_one_at_a_time
    def undo(self, session: DemoSession, settings: Settings) -> View:
        if session.image is None:
            return View(canvas=None, message=NO_IMAGE, level="warning")
        if not session.prompts.undo():
            return self._view(session, settings, "Nothing to undo.")
        return self._predict(session, settings, message="Removed the last prompt.")

    @_one_at_a_time
    def clear(self, session: DemoSession, settings: Settings) -> View:
        if session.image is None:
            return View(canvas=None, message=NO_IMAGE, level="warning")
        session.prompts.clear()
        session.reset_outputs()
        return self._view(session, settings, "Cleared all prompts and masks.")

    @_one_at_a_time
    def choose(self, session: DemoSession, settings: Settings, index: int) -> View:
        """Select candidate mask ``index`` (multimask output)."""
        if session.image is None:
            return View(canvas=None, message=NO_IMAGE, level="warning")
        if session.prediction is None or not 0 <= index < len(session.prediction.masks):
            return self._view(session, settings, "No such mask to choose.", "warning")
        session.choice = int(index)
        return self._view(session, settings, f"Showing mask {index + 1}.")

    @_one_at_a_time
    def refresh(self, session: DemoSession, settings: Settings, message: str = "") -> View:
        """Settings changed (model, keep ratio, multimask, heat map, compare): re-encode only when
        the (model, ratio) pair is not cached, then decode the same prompts again."""
        if session.image is None:
            return View(canvas=None, message=NO_IMAGE)
        model = self.model(settings.model)
        self._encoded(session, model, self._ratio(model, settings))
        if session.prompts.empty:
            session.prediction = session.compare_prediction = None
            if session.everything_key != (model.name, self._ratio(model, settings)):
                session.everything = None  # made by another model or ratio: stale
            return self._view(session, settings, message)
        return self._predict(session, settings, message=message, keep_choice=True)

    @_one_at_a_time
    def everything(
        self,
        session: DemoSession,
        settings: Settings,
        points_per_side: int = 16,
        progress: Optional[ProgressFn] = None,
        min_iou: Optional[float] = None,
        min_stability: Optional[float] = None,
    ) -> View:
        """Segment everything with ``SamAutomaticMaskGenerator`` on the cached features.

        ``min_iou`` / ``min_stability``: its quality filters (``pred_iou_thresh``,
        ``stability_score_thresh``), each in [0, 1]; None: the model's defaults
        (:attr:`DemoModel.everything_thresholds`).
        """
        if session.image is None:
            return View(canvas=None, message=NO_IMAGE, level="warning")
        points_per_side = int(points_per_side)
        if not 1 <= points_per_side <= 128:
            return self._view(session, settings, "Points per side must be 1..128.", "warning")
        model = self.model(settings.model)
        default_iou, default_stability = model.everything_thresholds
        min_iou = default_iou if min_iou is None else float(min_iou)
        min_stability = default_stability if min_stability is None else float(min_stability)
        if not (0.0 <= min_iou <= 1.0 and 0.0 <= min_stability <= 1.0):
            return self._view(
                session, settings, "Quality filters must lie between 0 and 1.", "warning"
            )
        encoded = self._encoded(session, model, self._ratio(model, settings))
        masks, seconds = segment_everything(
            model,
            session.image.rgb,
            encoded,
            points_per_side,
            progress,
            pred_iou_thresh=min_iou,
            stability_score_thresh=min_stability,
        )
        session.prompts.clear()
        session.reset_outputs()
        session.everything = masks
        session.everything_seconds = seconds
        session.everything_key = (model.name, encoded.keep_ratio)
        session.prediction_model = model.name
        message = (
            f"Segment everything: {len(masks)} masks from {points_per_side}x{points_per_side} "
            f"points in {seconds:.2f} s (predicted IoU >= {min_iou:.2f}, stability >= "
            f"{min_stability:.2f})."
        )
        if not masks:
            message += (
                " No mask passed the quality filters; lower them or try more points per side."
            )
        return self._view(session, settings, message)

    @_one_at_a_time
    def export(self, session: DemoSession, settings: Settings) -> Tuple[List[Path], View]:
        """Write the selected mask (or all segment-everything masks) as PNG and COCO RLE json.

        Files are written at the uploaded image's size, into a fresh folder under the export root
        (the system temp folder by default). Returns ([png, json], view); no files when there is
        no mask.
        """
        if session.image is None:
            return [], View(canvas=None, message=NO_IMAGE, level="warning")
        masks, scores = self._export_masks(session)
        if not masks:
            return [], self._view(session, settings, "No mask to download yet.", "warning")
        image = session.image
        height, width = image.original_size
        full = [self._to_original(m, (height, width)) for m in masks]
        if len(full) == 1:
            png = full[0].astype(np.uint8) * 255
        else:  # a label map: 0 background, i for mask i (largest first, later ones on top)
            png = np.zeros((height, width), np.uint16 if len(full) > 255 else np.uint8)
            for i, m in enumerate(full, start=1):
                png[m] = i
        model = self.model(session.prediction_model or settings.model)
        ratio = session.last_encode[1] if session.last_encode is not None else 1.0
        annotations = []
        for i, (m, score) in enumerate(zip(full, scores), start=1):
            rle = encode_mask(m)
            ys, xs = np.nonzero(m)
            bbox = [0, 0, 0, 0]
            if len(xs):
                bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
                        int(ys.max() - ys.min() + 1)]  # fmt: skip
            annotations.append(
                {
                    "id": i,
                    "image_id": 1,
                    "category_id": 1,
                    "segmentation": rle,
                    "area": int(m.sum()),
                    "bbox": bbox,
                    "iscrowd": 0,
                    "score": round(float(score), 4),
                }
            )
        document = {
            "info": {"model": model.name, "keep_ratio": ratio, "source": "biglittle-sam demo"},
            "images": [{"id": 1, "file_name": image.name, "height": height, "width": width}],
            "categories": [{"id": 1, "name": "object"}],
            "annotations": annotations,
        }
        root = self.export_root or Path(tempfile.gettempdir())
        root.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix="biglittle-sam-demo-", dir=root))
        png_path = folder / f"{image.name}_mask.png"
        json_path = folder / f"{image.name}_mask_rle.json"
        Image.fromarray(png).save(png_path)
        json_path.write_text(json.dumps(document, indent=1))
        what = "mask" if len(full) == 1 else f"{len(full)} masks (PNG: label map)"
        return [png_path, json_path], self._view(
            session, settings, f"Download ready: {what} at {width} x {height}."
        )

    # ---------------------------------------------------------------------------------- internals
    def _export_masks(self, session: DemoSession) -> Tuple[List[np.ndarray], List[float]]:
        if session.prediction is not None:
            i = min(session.choice, len(session.prediction.masks) - 1)
            return [session.prediction.masks[i]], [float(session.prediction.scores[i])]
        if session.everything:
            return (
                [m["segmentation"] for m in session.everything],
                [float(m["predicted_iou"]) for m in session.everything],
            )
        return [], []

    @staticmethod
    def _to_original(mask: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
        if mask.shape == size:
            return mask.astype(bool)
        resized = cv2.resize(mask.astype(np.uint8), (size[1], size[0]), cv2.INTER_NEAREST)
        return resized > 0

    def _predict(
        self,
        session: DemoSession,
        settings: Settings,
        notes: Optional[List[str]] = None,
        message: str = "",
        keep_choice: bool = False,
    ) -> View:
        """Decode the prompts; ``keep_choice`` keeps the selected mask index (same prompts, new
        settings) instead of selecting the highest predicted IoU."""
        assert session.image is not None
        model = self.model(settings.model)
        session.compare_prediction = session.compare_model = None
        if session.prompts.empty:
            session.prediction = None
            return self._view(session, settings, message or "No prompts.", notes=notes)
        encoded = self._encoded(session, model, self._ratio(model, settings))
        main_encode = session.last_encode
        points, labels, box = session.prompts.as_arrays()
        previous = session.prediction
        prediction = decode_prompts(model, encoded, points, labels, box, settings.multimask)
        session.prediction = prediction
        session.prediction_model = model.name
        same_prompts = keep_choice and previous is not None
        if not (same_prompts and len(previous.masks) == len(prediction.masks)):  # type: ignore
            session.choice = int(np.argmax(prediction.scores))
        if settings.compare:
            partner = self.compare_partner(settings)
            if partner is not None:
                other = self.models[partner]
                other_encoded = self._encoded(session, other, self._ratio(other, settings))
                session.compare_prediction = decode_prompts(
                    other, other_encoded, points, labels, box, settings.multimask
                )
                session.compare_model = partner
                session.last_encode = main_encode  # the cost panel reports the main model

        text = message or f"Mask from {session.prompts.describe()}."
        return self._view(session, settings, text, notes=notes)

    def _canvas(
        self,
        session: DemoSession,
        prediction: Optional[Prediction],
        encoded: Optional[EncodedImage],
        heat: bool,
        colour: Tuple[int, int, int],
    ) -> np.ndarray:
        assert session.display is not None
        canvas = session.display
        if heat and encoded is not None and encoded.usage is not None:
            canvas = draw_heat(canvas, encoded.usage)
        if session.everything is not None and prediction is None:
            canvas = draw_everything(canvas, session.everything)
        if prediction is not None:
            i = min(session.choice, len(prediction.masks) - 1)
            canvas = draw_mask(canvas, prediction.masks[i], colour)
        return draw_prompts(canvas, session.prompts, session.scale)

    def _thumbnails(self, session: DemoSession) -> Tuple[List[Tuple[np.ndarray, str]], List[str]]:
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

    def _cost(self, session: DemoSession, settings: Settings) -> str:
        model = self.model(settings.model)
        ratio = self._ratio(model, settings)
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
            rows.append(
                ("decoder time", f"{session.prediction.seconds * 1000:.1f} ms (last prompt)")
            )
        elif session.everything is not None:
            rows.append(("segment everything", f"{session.everything_seconds:.2f} s"))
        if settings.heat and encoded is not None and encoded.usage is not None:
            rows.append(
                (
                    "heat map",
                    f"bright: the token took the big blocks in most layers; dark: LITTLE only "
                    f"(mean {encoded.usage.mean():.2f})",
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
            measured = self._measured_speedup(session, model, encoded)
            if measured:
                rows.append(("measured encoder speedup", measured))
            else:
                rows.append(
                    ("measured encoder speedup", "turn on Compare with a plain SAM of this size")
                )
        lines = ["| cost | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
        return "\n".join(lines)

    def _measured_speedup(
        self, session: DemoSession, model: DemoModel, encoded: Optional[EncodedImage]
    ) -> str:
        if encoded is None:
            return ""
        for (name, _), other in session.cache.items():
            candidate = self.models.get(name)
            if candidate is not None and model.same_size_as(candidate):
                return (
                    f"**{other.seconds / max(encoded.seconds, 1e-9):.2f}x** "
                    f"({other.seconds * 1000:.0f} ms for {name}, on this image)"
                )
        return ""

    def _view(
        self,
        session: DemoSession,
        settings: Settings,
        message: str = "",
        level: str = "info",
        notes: Optional[List[str]] = None,
    ) -> View:
        if session.image is None or session.display is None:
            return View(canvas=None, message=NO_IMAGE, level="warning")
        model = self.model(settings.model)
        ratio = self._ratio(model, settings)
        encoded = session.cache.get((model.name, ratio))
        prediction = session.prediction if session.prediction_model == model.name else None
        canvas = self._canvas(session, prediction, encoded, settings.heat, MASK_COLOURS[0])
        if settings.heat and not model.is_biglittle:
            notes = list(notes or []) + [
                "heat map: plain SAM sends every token through every block"
            ]
        masks, labels = self._thumbnails(session)
        view = View(canvas=canvas, masks=masks, choices=labels, cost=self._cost(session, settings))
        view.choice = session.choice if labels else None
        if settings.compare:
            self._compare_into(view, session, settings)
        if notes and level == "info":
            level = "warning"
        all_notes = list(session.image.notes) + [
            n for n in notes or [] if n not in session.image.notes
        ]
        text = message
        if all_notes:
            text = (text + "\n\n" if text else "") + "\n".join(f"- Note: {n}" for n in all_notes)
        view.message = text
        view.level = level
        return view

    def _compare_into(self, view: View, session: DemoSession, settings: Settings) -> None:
        partner = self.compare_partner(settings)
        if partner is None:
            view.compare_text = (
                "Compare needs a second model of the other kind (plain SAM vs big.LITTLE); "
                "start the demo with --sam-checkpoint or --checkpoint to add one."
            )
            return
        other = self.models[partner]
        encoded = session.cache.get((partner, self._ratio(other, settings)))
        prediction = session.compare_prediction if session.compare_model == partner else None
        view.compare_canvas = self._canvas(session, prediction, encoded, False, MASK_COLOURS[1])
        main = session.prediction
        if prediction is None or main is None:
            view.compare_text = f"**{partner}**: click on the image to compare masks."
            return
        i = min(session.choice, len(main.masks) - 1, len(prediction.masks) - 1)
        iou = mask_iou(main.masks[i], prediction.masks[i])
        view.compare_text = (
            f"**{partner}** (right, orange) vs **{settings.model}** (left, blue), mask {i + 1}: "
            f"IoU between the masks **{iou:.3f}**; predicted IoU {prediction.scores[i]:.2f} vs "
            f"{main.scores[i]:.2f}; decoder {prediction.seconds * 1000:.1f} ms"
        )
