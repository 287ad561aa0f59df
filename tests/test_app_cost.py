"""The dashboard's cost to training: cheaper drawing that shows what it replaced, frames
spaced to a CPU budget, and what a person acts on never waiting for a frame.

The app shares the CPU (and the GIL) with training (see ``bench/app_overhead.py``);
these tests hold the cheap ways to the picture and the promptness people already had.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterable, Sequence

import pytest
from helpers import StandInRun, start_event, step_event
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.color import Color
from rich.console import Console
from rich.segment import Segment
from rich.style import Style
from textual.renderables.sparkline import Sparkline as TextualSparkline

from scu_tui.app import ScuApp, make_app
from scu_tui.app.app import FramePacer
from scu_tui.app.widgets import Readout, Spark, mean, spark_rows
from scu_tui.presets import load_preset
from scu_tui.protocol import DoneEvent, PauseEvent, StartEvent, StepEvent

LOW, HIGH = Color.from_rgb(20, 200, 40), Color.from_rgb(250, 160, 0)
BASE = Style(color="#e0e0e0", bgcolor="#101418")


def cells(lines: Iterable[Iterable[Segment]]) -> list[list[tuple[str, Style | None]]]:
    """Every cell of every line as (character, style), however the segments split them."""
    return [[(char, seg.style) for seg in line for char in seg.text] for line in lines]


def textual_rows(
    data: Sequence[float], width: int, height: int, summary: Callable[[Sequence[float]], float]
) -> list[list[Segment]]:
    """What Textual's own sparkline draws, over the widget's base style as Textual puts it."""
    renderable = TextualSparkline(
        list(data),
        width=width,
        height=height,
        min_color=LOW,
        max_color=HIGH,
        summary_function=summary,
    )
    console = Console(width=width, color_system="truecolor", legacy_windows=False)
    segments = (Segment(text, BASE + style) for text, style, _ in console.render(renderable))
    lines = Segment.split_and_crop_lines(segments, width, include_new_lines=False, pad=False)
    return list(lines)  # unpadded, as Textual's RichVisual splits them


finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


@settings(max_examples=150, deadline=None)
@given(
    data=st.lists(finite, max_size=300),
    width=st.integers(1, 90),
    height=st.integers(1, 30),
    summary=st.sampled_from([mean, max]),
)
def test_the_chart_shows_textuals_sparkline_cell_for_cell(
    data: list[float], width: int, height: int, summary: Callable[[Sequence[float]], float]
) -> None:
    ours = spark_rows(data, width, height, LOW, HIGH, BASE, summary)
    assert cells(ours) == cells(textual_rows(data, width, height, summary))
    assert all(row.cell_length == width for row in ours if row.cell_length)


def test_a_falling_loss_fills_the_bottom_rows_and_leaves_the_top_blank() -> None:
    data = [3 * math.exp(-i / 40) for i in range(120)]
    rows = spark_rows(data, 60, 10, LOW, HIGH, BASE, mean)
    top, bottom = cells(rows)[0], cells(rows)[-1]
    assert top[0][0] != " " and top[-1][0] == " "  # only the first columns reach the top
    assert {char for char, _ in bottom} <= set("▁▂▃▄▅▆▇█")  # every column has a bar
    assert top[0][1] != bottom[-1][1]  # the highest bar and the lowest differ in colour
    # equal neighbours share a segment: far fewer segments than cells
    assert sum(len(row) for row in rows) < 60 * 10 / 2


# --- frames spaced to a CPU budget --------------------------------------------------------


def test_frames_come_at_the_frame_rate_while_cheap_and_spread_out_when_costly() -> None:
    pacer = FramePacer(hz=2.0, budget=0.03, longest=2.0)
    pacer.drawn(0.0, cpu=0.0)
    assert not pacer.due(0.49) and pacer.due(0.5)
    pacer.drawn(0.5, cpu=0.006)  # 6 ms of the thread's CPU in half a second: 1.2 %
    assert pacer.interval == 0.5
    pacer.drawn(1.0, cpu=0.030)  # a 24 ms frame: 0.8 s apart keeps the thread at 3 %
    assert pacer.interval == pytest.approx(0.8)
    assert not pacer.due(1.79) and pacer.due(1.8)
    pacer.drawn(1.8, cpu=0.530)  # half a second of CPU (a screen drawn on top): 2 s at most
    assert pacer.interval == 2.0
    pacer.drawn(3.8, cpu=0.534)  # cheap again: back to the frame rate at once
    assert pacer.interval == 0.5


def started() -> StartEvent:
    return start_event(max_steps=100, mode="auto")


def stepped(n: int) -> StepEvent:
    return step_event(n, loss=2.0 - n / 100, max_steps=100)


def shown(app: ScuApp, widget: str) -> str:
    return str(app.dashboard.query_one(widget, Readout)._shown)


def charted(app: ScuApp) -> int:
    """How many training losses the loss chart shows."""
    return len(app.dashboard.query_one("#loss-spark", Spark).data or [])


async def test_charts_wait_for_a_frame_but_numbers_a_pause_and_the_end_do_not() -> None:
    app = make_app(load_preset("demo").replace({"ui.refresh_hz": 20.0}), run_factory=StandInRun)
    async with app.run_test(size=(80, 24)):

        def tick() -> None:
            """One refresh tick, run here: the app's own timer is paused, so no tick of its
            own lands between the test's (a loaded machine's scheduling decides nothing)."""
            app.drain()

        def no_frame_allowed() -> None:
            app.pacer.drawn(time.monotonic(), time.thread_time())
            app.pacer.interval = math.inf  # the budget allows no frame

        app.feed.emit(started())
        app.feed.emit(stepped(1))
        await asyncio.wait_for(app.drains(1), 30)  # the start: charts drawn at once
        assert charted(app) == 1 and shown(app, "#status-word") == "RUNNING"
        assert app._drain_timer is not None
        app._drain_timer.pause()

        no_frame_allowed()
        for n in range(2, 6):
            app.feed.emit(stepped(n))
        tick()  # steps: the numbers at once, the chart waits for a frame...
        assert shown(app, "#status-numbers").startswith("step 5/100") and charted(app) == 1
        tick()
        assert charted(app) == 1
        tick()  # ...or for the run to go quiet: a second tick in a row without news
        assert charted(app) == 5

        no_frame_allowed()
        app.feed.emit(stepped(6))
        app.feed.emit(PauseEvent(6))
        tick()  # a pause shows at once, the chart included
        assert shown(app, "#status-word") == "PAUSED" and charted(app) == 6
        assert shown(app, "#status-numbers").startswith("step 6/100  ETA paused")

        no_frame_allowed()
        app.feed.emit(stepped(7))
        app.feed.emit(DoneEvent(7, status="stopped"))
        tick()
        assert shown(app, "#status-word") == "STOPPED" and charted(app) == 7
        assert app.training_run is not None
        app.training_run.request_stop()
