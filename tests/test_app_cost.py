"""The dashboard's cost to training: the cheaper drawing shows exactly what it replaced.

The app shares the CPU with training, so its panels are drawn the cheap way (see
``bench/app_overhead.py`` for what that buys); these tests hold the cheap way to the
picture people already saw.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

from hypothesis import given, settings
from hypothesis import strategies as st
from rich.color import Color
from rich.console import Console
from rich.segment import Segment
from rich.style import Style
from textual.renderables.sparkline import Sparkline as TextualSparkline

from scu_tui.app.widgets import mean, spark_rows

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
