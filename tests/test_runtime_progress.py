"""The one progress bar and duration formatter (runtime.progress)."""

from __future__ import annotations

import io

from biglittle_sam.runtime.progress import Progress, format_duration


def test_format_duration() -> None:
    assert format_duration(0) == "00:00"
    assert format_duration(75.9) == "01:15"
    assert format_duration(3 * 3600 + 62) == "3:01:02"
    assert format_duration(-5) == "00:00"
    assert format_duration(float("nan")) == "?" and format_duration(float("inf")) == "?"


def test_bar_counts_from_initial_and_shows_the_postfix() -> None:
    stream = io.StringIO()
    with Progress(10, desc="distill", stream=stream, unit="step", initial=3) as bar:
        bar.update(1, postfix={"loss": "0.25", "lr": "1e-4"})
        bar.write("step 4: checkpoint last.pth")
    text = stream.getvalue()
    assert "distill" in text and "4/10" in text and "loss=0.25" in text
    assert "step 4: checkpoint last.pth\n" in text
    assert bar.done == 4
    bar.write("after close")  # messages still reach the stream once the bar is closed
    assert stream.getvalue().endswith("after close\n")


def test_disabled_bar_prints_nothing_but_counts() -> None:
    stream = io.StringIO()
    bar = Progress(5, enabled=False, stream=stream)
    bar.update(2)
    bar.write("hidden")
    bar.close()
    assert stream.getvalue() == "" and bar.done == 2
