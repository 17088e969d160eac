"""The demo's actions: each user action on a :class:`DemoSession` becomes a :class:`View`.

:class:`DemoController` holds the shared, read-only models (through :class:`ModelCatalog`); the
views are built by :mod:`.views` and downloads written by :mod:`.export`. Nothing here knows
Gradio, so tests call the actions directly.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar, Union, cast

import numpy as np
from PIL import Image

from .catalog import ModelCatalog
from .engine import EncodedImage, decode_prompts, encode_image, segment_everything
from .export import export_masks
from .images import ImageLoadError, load_image, normalize_image
from .models import DemoModel
from .render import display_scale, display_stretch, resize_for_display
from .session import MODE_BOX, MODE_NEGATIVE, NO_IMAGE, DemoSession, ProgressFn, Settings, View
from .views import build_view

__all__ = ["DemoController"]

F = TypeVar("F", bound=Callable[..., Any])


def _one_at_a_time(method: F) -> F:
    """Hold the session's lock (the first argument after ``self``) while ``method`` runs."""

    @functools.wraps(method)
    def wrapper(self: "DemoController", session: DemoSession, *args: Any, **kwargs: Any) -> Any:
        with session.lock:
            return method(self, session, *args, **kwargs)

    return cast(F, wrapper)


class DemoController(ModelCatalog):
    """The demo's actions. Each returns a :class:`View`; none raises on a user's mistake.

    Actions that may run the image encoder take ``progress``: called with (None, what is running)
    before an encoder pass (whose progress is unknown), so the page can say what the wait is for.
    """

    def __init__(self, models: Dict[str, DemoModel], export_dir: Optional[Path] = None) -> None:
        super().__init__(models)
        self.export_root = Path(export_dir) if export_dir is not None else None

    def _encoded(
        self,
        session: DemoSession,
        model: DemoModel,
        ratio: float,
        progress: Optional[ProgressFn] = None,
    ) -> EncodedImage:
        """The cached encoder output, or a fresh encoder pass (then cached, oldest dropped)."""
        assert session.image is not None
        key = (model.name, ratio)
        hit = session.cache.get(key)
        if hit is not None:
            session.cache.move_to_end(key)
            session.last_encode = (model.name, ratio, hit.seconds, True)
            return hit
        if progress is not None:
            at = f" at keep ratio {ratio:.2f}" if model.is_biglittle else ""
            progress(None, f"Running the image encoder of {model.name}{at}")
        encoded = encode_image(model, session.image.rgb, ratio)
        session.remember(key, encoded)
        session.last_encode = (model.name, ratio, encoded.seconds, False)
        return encoded

    # self._view(session, settings, message, level, notes): build_view with this catalog.
    _view = build_view

    # ----------------------------------------------------------------------------------- actions
    @_one_at_a_time
    def load(
        self,
        session: DemoSession,
        source: Union[None, str, Path, np.ndarray, Image.Image],
        settings: Settings,
        progress: Optional[ProgressFn] = None,
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
        h, w = image.rgb.shape[:2]
        session.scale = display_scale(h, w)
        session.stretch = display_stretch(h, w, session.scale)
        session.display = resize_for_display(image.rgb, session.scale, session.stretch)
        model = self.model(settings.model)
        self._encoded(session, model, self.ratio(model, settings), progress)
        notes = list(image.notes)
        if session.stretch != (1.0, 1.0):
            axis = "vertically" if session.stretch[1] > 1 else "horizontally"
            notes.append(
                f"a long, thin image: shown stretched {max(session.stretch):.1f}x {axis} so it "
                "can be clicked; masks and downloads keep its true shape"
            )
        message = f"Loaded {image.name} ({w} x {h}). Click on an object to segment it."
        return self._view(session, settings, message, "warning" if notes else "info", notes)

    @_one_at_a_time
    def click(
        self,
        session: DemoSession,
        settings: Settings,
        x: float,
        y: float,
        progress: Optional[ProgressFn] = None,
    ) -> View:
        """A click at canvas pixel (x, y): adds a point or a box corner, then decodes."""
        if session.image is None:
            return View(canvas=None, message=NO_IMAGE, level="warning")
        h, w = session.image.rgb.shape[:2]
        sx, sy = session.canvas_scale
        ix, iy = float(x) / sx, float(y) / sy
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
        return self._predict(session, settings, progress=progress)

    @_one_at_a_time
    def add_prompts(
        self,
        session: DemoSession,
        settings: Settings,
        points: Sequence[Tuple[float, float, bool]] = (),
        box: Optional[Tuple[float, float, float, float]] = None,
        progress: Optional[ProgressFn] = None,
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
        return self._predict(session, settings, notes, progress=progress)

    @_one_at_a_time
    def undo(
        self, session: DemoSession, settings: Settings, progress: Optional[ProgressFn] = None
    ) -> View:
        if session.image is None:
            return View(canvas=None, message=NO_IMAGE, level="warning")
        if not session.prompts.undo():
            return self._view(session, settings, "Nothing to undo.")
        return self._predict(
            session, settings, message="Removed the last prompt.", progress=progress
        )

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
    def refresh(
        self,
        session: DemoSession,
        settings: Settings,
        message: str = "",
        progress: Optional[ProgressFn] = None,
    ) -> View:
        """Settings changed (model, keep ratio, multimask, heat map, compare): re-encode only when
        the (model, ratio) pair is not cached, then decode the same prompts again."""
        if session.image is None:
            return View(canvas=None, message=NO_IMAGE)
        model = self.model(settings.model)
        ratio = self.ratio(model, settings)
        self._encoded(session, model, ratio, progress)
        if session.prompts.empty:
            session.prediction = session.compare_prediction = None
            if session.everything_key != (model.name, ratio):
                session.everything = None  # made by another model or ratio: stale
            return self._view(session, settings, message)
        return self._predict(
            session, settings, message=message, keep_choice=True, progress=progress
        )

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

        ``progress`` hears the encoder pass (when the features are not cached) and then each
        decoded batch of point prompts. ``min_iou`` / ``min_stability``: its quality filters
        (``pred_iou_thresh``, ``stability_score_thresh``), each in [0, 1]; None: the model's
        defaults (:attr:`DemoModel.everything_thresholds`).
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
        encoded = self._encoded(session, model, self.ratio(model, settings), progress)
        decoding = None if progress is None else self._decoding(progress, points_per_side)
        if decoding is not None:
            decoding(0.0, "")
        masks, seconds = segment_everything(
            model,
            session.image.rgb,
            encoded,
            points_per_side,
            decoding,
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

        Files are written at the uploaded image's size, into the session's folder under the export
        root (the system temp folder by default; see :func:`.export.export_masks`). Returns
        ([png, json], view); no files when there is no mask.
        """
        if session.image is None:
            return [], View(canvas=None, message=NO_IMAGE, level="warning")
        model = self.model(session.prediction_model or settings.model)
        ratio = session.last_encode[1] if session.last_encode is not None else 1.0
        paths, what = export_masks(session, model.name, ratio, self.export_root)
        if not paths:
            return [], self._view(session, settings, "No mask to download yet.", "warning")
        view = self._view(session, settings, f"Download ready: {what}.")
        view.files = paths
        return paths, view

    # ---------------------------------------------------------------------------------- internals
    @staticmethod
    def _decoding(progress: ProgressFn, points_per_side: int) -> ProgressFn:
        """``progress`` for segment everything's decoding: says it decodes, not encodes."""
        grid = f"{points_per_side}x{points_per_side}"

        def report(fraction: Optional[float], text: str) -> None:
            progress(fraction, f"Segment everything ({grid} points): decoding {text}".rstrip())

        return report

    def _predict(
        self,
        session: DemoSession,
        settings: Settings,
        notes: Optional[List[str]] = None,
        message: str = "",
        keep_choice: bool = False,
        progress: Optional[ProgressFn] = None,
    ) -> View:
        """Decode the prompts; ``keep_choice`` keeps the selected mask index (same prompts, new
        settings) instead of selecting the highest predicted IoU."""
        assert session.image is not None
        model = self.model(settings.model)
        session.compare_prediction = session.compare_model = None
        if session.prompts.empty:
            session.prediction = None
            return self._view(session, settings, message or "No prompts.", notes=notes)
        encoded = self._encoded(session, model, self.ratio(model, settings), progress)
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
                other_encoded = self._encoded(session, other, self.ratio(other, settings), progress)
                session.compare_prediction = decode_prompts(
                    other, other_encoded, points, labels, box, settings.multimask
                )
                session.compare_model = partner
                session.last_encode = main_encode  # the cost panel reports the main model

        text = message or f"Mask from {session.prompts.describe()}."
        return self._view(session, settings, text, notes=notes)
