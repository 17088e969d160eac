"""The one progress bar (tqdm) and the one duration formatter of the package.

Evaluation counts images, the teacher cache counts images, the training loop counts steps and shows
its loss, learning rate and throughput beside the bar. All of them use :class:`Progress`; only
rank 0 enables it. tqdm is a core dependency, so there is no second, hand-written bar.
"""

from __future__ import annotations

import math
import sys
from types import TracebackType
from typing import Any, Mapping, Optional, TextIO, Type

from tqdm import tqdm

__all__ = ["Progress", "format_duration"]


def format_duration(seconds: float) -> str:
    """``h:mm:ss`` (from one hour on) or ``mm:ss``; ``?`` when unknown (NaN or infinite)."""
    if not math.isfinite(seconds):
        return "?"
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    """A tqdm bar counting ``unit`` up to ``total``, with rate and ETA; silent when disabled.

    Arguments:
      total: the count at which the work is done.
      desc: the label in front of the bar.
      enabled: False on ranks other than 0 and with ``--no-progress``: nothing is shown, and
        :meth:`write` prints nothing either.
      stream: where the bar goes (default stderr).
      unit: what is counted (``img``, ``step``).
      initial: the count already done (a resumed training run starts at its checkpoint's step).
    """

    def __init__(
        self,
        total: int,
        desc: str = "eval",
        enabled: bool = True,
        stream: Optional[TextIO] = None,
        unit: str = "img",
        initial: int = 0,
    ) -> None:
        self.total = total
        self.desc = desc
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.done = initial
        self._bar: Optional[Any] = None
        if enabled:
            self._bar = tqdm(
                total=total,
                initial=initial,
                desc=desc,
                unit=unit,
                file=self.stream,
                dynamic_ncols=True,
            )

    def update(self, n: int = 1, postfix: Optional[Mapping[str, str]] = None) -> None:
        """``n`` more done; ``postfix`` (``{"loss": "0.31", ...}``) is shown after the bar."""
        self.done += n
        if self._bar is None:
            return
        if postfix is not None:
            self._bar.set_postfix(dict(postfix), refresh=False)
        self._bar.update(n)

    def write(self, message: str) -> None:
        """A message line that does not break the bar (nothing when disabled)."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(message, file=self.stream)
        else:
            self.stream.write(message + "\n")
            self.stream.flush()

    def close(self) -> None:
        """Finish the bar (idempotent); :meth:`write` still works afterwards."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()
