"""One user's state and what the page shows, independent of Gradio so tests can build them.

A :class:`DemoSession` belongs to one browser session (Gradio keeps one per user in ``gr.State``):
the image, the prompts, the cached encoder outputs per (model, keep ratio), the last masks and the
files written for that user. :class:`Settings` are the page's controls and :class:`View` is
everything the page shows after an action.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from ..config import DEFAULT_KEEP_RATIO
from .engine import EncodedImage, Prediction
from .images import LoadedImage
from .prompts import PromptSet

__all__ = [
    "CACHE_ENTRIES",
    "MODE_BOX",
    "MODE_NEGATIVE",
    "MODE_POSITIVE",
    "MODES",
    "NO_IMAGE",
    "DemoSession",
    "ProgressFn",
    "Settings",
    "View",
]

MODE_POSITIVE = "Positive point"
MODE_NEGATIVE = "Negative point"
MODE_BOX = "Box (two corner clicks)"
MODES = (MODE_POSITIVE, MODE_NEGATIVE, MODE_BOX)
NO_IMAGE = "Load an image first: upload one, paste one, or pick an example below."
CACHE_ENTRIES = 6  # encoder outputs kept per session by default: a few models x keep ratios
ProgressFn = Callable[[Optional[float], str], None]  # (fraction done or None: unknown, what)


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
    keep_ratio: float = DEFAULT_KEEP_RATIO
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
      files: downloads written by this action (empty for every other action, so the page drops
        links that no longer match what it shows).
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
    files: List[Path] = field(default_factory=list)


def _remove_tree(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _remove_uploads(uploads: List[Path]) -> None:
    """Delete the uploads (and Gradio's per-upload folder, when now empty); empties the list."""
    for upload in uploads:
        upload.unlink(missing_ok=True)
        try:
            upload.parent.rmdir()
        except OSError:
            pass
    uploads.clear()


@dataclass
class DemoSession:
    """One user's state. Nothing in it is shared with other sessions.

    ``cache_entries`` bounds the encoder outputs kept (oldest dropped first). Files written for the
    user live in one folder per session (:meth:`workspace`), removed by :meth:`close` or, when a
    session is dropped without being closed, when it is garbage collected.
    """

    image: Optional[LoadedImage] = None
    display: Optional[np.ndarray] = None  # the image at canvas size
    scale: float = 1.0  # canvas pixels per image pixel
    stretch: Tuple[float, float] = (1.0, 1.0)  # (x, y) on top of scale for long thin images
    prompts: PromptSet = field(default_factory=PromptSet)
    cache: "OrderedDict[Tuple[str, float], EncodedImage]" = field(default_factory=OrderedDict)
    cache_entries: int = CACHE_ENTRIES
    prediction: Optional[Prediction] = None
    prediction_model: Optional[str] = None
    choice: int = 0
    compare_prediction: Optional[Prediction] = None
    compare_model: Optional[str] = None
    everything: Optional[List[Dict[str, Any]]] = None
    everything_seconds: float = 0.0
    everything_key: Optional[Tuple[str, float]] = None  # (model, keep ratio) that made them
    last_encode: Optional[Tuple[str, float, float, bool]] = None  # model, ratio, seconds, cached
    uploads: List[Path] = field(default_factory=list)  # upload files to delete with the session
    # One action at a time per session: Gradio may run two of a user's events at once (two quick
    # toggles), and both would change this object.
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)
    _workspace: Optional[Path] = field(default=None, repr=False, compare=False)
    _finalizer: Optional[Any] = field(default=None, repr=False, compare=False)
    _uploads_finalizer: Optional[Any] = field(default=None, repr=False, compare=False)

    @property
    def canvas_scale(self) -> Tuple[float, float]:
        """(x, y) canvas pixels per image pixel."""
        return self.scale * self.stretch[0], self.scale * self.stretch[1]

    def reset_outputs(self) -> None:
        self.prediction = None
        self.prediction_model = None
        self.compare_prediction = None
        self.compare_model = None
        self.everything = None
        self.choice = 0

    def remember(self, key: Tuple[str, float], encoded: EncodedImage) -> None:
        """Cache an encoder output, dropping the oldest beyond ``cache_entries``."""
        self.cache[key] = encoded
        while len(self.cache) > max(1, self.cache_entries):
            self.cache.popitem(last=False)

    def workspace(self, root: Optional[Path] = None) -> Path:
        """This session's folder for downloads, under ``root`` (the system temp folder by
        default); created on first use and deleted with the session."""
        if self._workspace is None or not self._workspace.is_dir():
            base = Path(root) if root is not None else Path(tempfile.gettempdir())
            base.mkdir(parents=True, exist_ok=True)
            self._workspace = Path(tempfile.mkdtemp(prefix="biglittle-sam-demo-", dir=base))
            # Gradio's session cap drops states without a callback: the folder then goes when
            # the session object is collected. The finalizer must not hold the session itself.
            self._finalizer = weakref.finalize(self, _remove_tree, str(self._workspace))
        return self._workspace

    def add_upload(self, path: Path) -> None:
        """Own an uploaded file: it is deleted with the session, by :meth:`close` or, when
        Gradio's session cap drops the session without closing it, when it is collected."""
        self.uploads.append(Path(path))
        if self._uploads_finalizer is None:  # holds the list, never the session
            self._uploads_finalizer = weakref.finalize(self, _remove_uploads, self.uploads)

    def close(self) -> None:
        """Free everything the session holds: encodings, masks, its files and its uploads."""
        with self.lock:
            self.cache.clear()
            self.prompts.clear()
            self.reset_outputs()
            self.image = self.display = None
            if self._finalizer is not None:
                self._finalizer()  # removes the workspace once
            self._workspace = self._finalizer = None
            _remove_uploads(self.uploads)
