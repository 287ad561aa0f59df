"""The screens over the dashboard, one per module: the preset picker, the runs list, the
comparison of runs, plots, the decision inspector, help, text, and two small modals.

Each screen is keyboard-first (no mouse needed) and reads the run only through the
app's :class:`~scu_tui.app.feed.RunState`.
"""

from __future__ import annotations

from scu_tui.app.screens.compare import CompareScreen, render_comparison, run_history
from scu_tui.app.screens.confirm import ConfirmScreen
from scu_tui.app.screens.help import GLOSSARY, HelpScreen
from scu_tui.app.screens.inspector import (
    EVIDENCE_WORDS,
    InspectorScreen,
    effect_text,
    evidence_lines,
    inspector_text,
)
from scu_tui.app.screens.name import NameScreen
from scu_tui.app.screens.picker import PresetPicker
from scu_tui.app.screens.plots import PlotsScreen, ema, render_plots, step_ticks, thin
from scu_tui.app.screens.runs import RunChoice, RunsScreen
from scu_tui.app.screens.text import TextScreen, comparison_text, samples_text

__all__ = [
    "EVIDENCE_WORDS",
    "GLOSSARY",
    "CompareScreen",
    "ConfirmScreen",
    "HelpScreen",
    "InspectorScreen",
    "NameScreen",
    "PlotsScreen",
    "PresetPicker",
    "RunChoice",
    "RunsScreen",
    "TextScreen",
    "comparison_text",
    "effect_text",
    "ema",
    "evidence_lines",
    "inspector_text",
    "render_comparison",
    "render_plots",
    "run_history",
    "samples_text",
    "step_ticks",
    "thin",
]
