"""A progress bar with images/s and ETA: tqdm when installed, else a line every few seconds."""

from __future__ import annotations

import sys
import time
from typing import Any, Optional, TextIO

__all__ = ["Progress"]


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    """Counts images; shows rate and ETA. Disabled (silent) when ``enabled`` is False."""

    def __init__(
        self,
        total: int,
        desc: str = "eval",
        enabled: bool = True,
        stream: Optional[TextIO] = None,
        every_s: float = 5.0,
    ) -> None:
        self.total = total
        self.desc = desc
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.every_s = every_s
        self.done = 0
        self.start = time.perf_counter()
        self._last = self.start
        self._bar: Any = None
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                self._bar = None
            else:
                self._bar = tqdm(
                    total=total, desc=desc, unit="img", file=self.stream, dynamic_ncols=True
                )

    def update(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.perf_counter()
        if now - self._last >= self.every_s or self.done >= self.total:
            self._last = now
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    def line(self) -> str:
        """``desc: done/total img, rate img/s, elapsed, ETA``."""
        elapsed = time.perf_counter() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        eta_text = _duration(eta) if eta == eta else "?"
        return (
            f"{self.desc}: {self.done}/{self.total} img, {rate:.2f} img/s, "
            f"elapsed {_duration(elapsed)}, ETA {eta_text}"
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
