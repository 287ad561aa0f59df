"""The report: tables, a text plot, the verdict, and its section of docs/benchmarks.md."""

from __future__ import annotations

import math
import re
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from bench.controller.analysis import DIVERGED_ROLLBACKS, TARGET_FACTOR, Analysis, mean_ci
from bench.controller.arms import ARM_LABELS, ARMS, LR_BOUNDS
from bench.controller.tasks import Task
from scu_tui.control.policy import LR

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "benchmarks.md"

# --- the report -----------------------------------------------------------------------------

def fmt(x: float, digits: int = 4) -> str:
    return "nan" if not math.isfinite(x) else f"{x:.{digits}f}"


def pm(values: Sequence[float], digits: int = 4) -> str:
    m, h = mean_ci(values)
    return fmt(m, digits) if not math.isfinite(h) else f"{fmt(m, digits)} ± {fmt(h, digits)}"


def table(header: Sequence[str], rows: Iterable[Sequence[str]], align: str = "") -> list[str]:
    align = align or "l" + "r" * (len(header) - 1)
    marks = {"l": ":--", "r": "--:", "c": ":-:"}
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(marks[c] for c in align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def verdict(a: Analysis) -> tuple[list[str], bool]:
    """The target's clauses, one line each, and whether all of them hold."""
    if "scu" not in a.arms:
        return ["- (no S-SCU arm in these results)"], False
    lines: list[str] = []
    holds: list[bool] = []

    def clause(ok: bool, text: str) -> None:
        holds.append(ok)
        lines.append(f"- {text}: **{'yes' if ok else 'no'}**")

    overall = {arm: a.overall_relative(arm) for arm in a.arms if arm in ARMS}
    ranked = sorted(overall, key=lambda k: overall[k])
    clause(ranked[0] == "scu", "The S-SCU has the lowest mean regret over the LR grid")
    ranking = ", ".join(f"{ARM_LABELS[k]} {100 * overall[k]:.2f} %" for k in ranked)
    lines.append(f"  (mean relative regret over every task and LR: {ranking};")
    per_task = []
    for t in a.tasks:
        regret = {arm: a.mean_regret(t, arm) for arm in a.arms if arm in ARMS}
        low = min(regret, key=lambda k: regret[k])
        per_task.append(f"{t}: lowest {ARM_LABELS[low]} {fmt(regret[low])}")
    lines[-1] += f" per task, {'; '.join(per_task)})"

    scu_runs = [r for (_, _, arm), c in a.cells.items() if arm == "scu" for r in c.results]
    diverged = [r for r in scu_runs if r.diverged]
    clause(not diverged, "No S-SCU divergence in any cell")
    where = ", ".join(f"{r.task} x{r.factor:g} seed {r.seed}" for r in diverged)
    lines.append(f"  ({len(diverged)} of {len(scu_runs)} runs{': ' + where if where else ''})")

    if "placebo" in a.arms:
        ok = all(a.mean_regret(t, "scu") < a.mean_regret(t, "placebo") for t in a.tasks)
        parts = [
            f"{t}: {fmt(a.mean_regret(t, 'scu'))} vs {fmt(a.mean_regret(t, 'placebo'))}"
            for t in a.tasks
        ]
        clause(ok, "It beats the placebo on every task")
        lines.append(f"  (mean regret, S-SCU vs placebo: {'; '.join(parts)})")

    if 1.0 in a.factors:
        rel = {t: a.relative_regret(t, 1.0, "scu") for t in a.tasks}
        ok = all(v <= 0.01 for v in rel.values())
        clause(ok, "At the tuned LR it ends within 1 % of the best arm")
        parts = []
        for t in a.tasks:
            text = f"{t}: {100 * rel[t]:+.2f} % vs {ARM_LABELS[a.best[(t, 1.0)]]}"
            if (t, 1.0, "cosine") in a.cells and a.best[(t, 1.0)] != "cosine":
                own = a.cell(t, 1.0, "scu").mean - a.cell(t, 1.0, "cosine").mean
                base = a.cell(t, 1.0, "cosine").mean + a.cell(t, 1.0, "cosine").results[0].floor
                text += f", {100 * own / base:+.2f} % vs its own base, warmup+cosine"
            parts.append(text)
        lines.append(f"  ({'; '.join(parts)})")
    return lines, all(holds)


def headline_table(a: Analysis) -> list[str]:
    header = ["arm"]
    header += [f"mean regret, {t} (95 % CI)" for t in a.tasks]
    header += ["mean relative regret", "diverged runs", "LR changes / run", "other actions / run"]
    rows = []
    for arm in a.arms:
        row = [ARM_LABELS[arm]]
        for t in a.tasks:
            per_seed = [
                statistics.fmean(a.cell(t, f, arm).regret[i] for f in a.factors)
                for i in range(min(len(a.cell(t, f, arm).regret) for f in a.factors))
            ]
            row.append(pm(per_seed))
        row.append(f"{100 * a.overall_relative(arm):.2f} %")
        runs = [r for (_, _, x), c in a.cells.items() if x == arm for r in c.results]
        row.append(f"{a.divergences(arm)} / {len(runs)}")
        row.append(f"{statistics.fmean(r.actions.get(LR, 0) for r in runs):.2f}")
        other = statistics.fmean(sum(v for k, v in r.actions.items() if k != LR) for r in runs)
        row.append(f"{other:.2f}")
        rows.append(row)
    return table(header, rows)


def task_table(a: Analysis, task: str) -> list[str]:
    header = [
        "LR",
        "arm",
        f"final {a.metric[task]} (95 % CI)",
        "regret (95 % CI)",
        "steps to target",
        "diverged",
        "actions / run",
    ]
    rows = []
    for f in a.factors:
        for arm in a.arms:
            c = a.cell(task, f, arm)
            best = a.best[(task, f)] == arm
            steps = [r.steps_to(a.targets[task]) for r in c.results]
            reached = [s for s in steps if s is not None]
            to_target = (
                f"{statistics.median(reached):.0f} ({len(reached)}/{len(steps)})"
                if reached
                else "—"
            )
            acts: Counter[str] = Counter()
            for r in c.results:
                acts.update(r.actions)
            n = len(c.results)
            act_text = ", ".join(
                f"{k.replace('lr_multiplier', 'lr')} {v / n:.1f}" for k, v in sorted(acts.items())
            )
            rows.append(
                [
                    f"x{f:g}",
                    f"**{ARM_LABELS[arm]}**" if best else ARM_LABELS[arm],
                    pm(c.scores),
                    "best" if best else pm(c.regret),
                    to_target,
                    str(sum(r.diverged for r in c.results)),
                    act_text or "—",
                ]
            )
    return table(header, rows, "llrrrrl")


def rules_table(a: Analysis) -> list[str]:
    """What the S-SCU did: applied proposals by rule, per task and LR (totals over seeds)."""
    rows = []
    for t in a.tasks:
        for f in a.factors:
            if (t, f, "scu") not in a.cells:
                continue
            c = a.cell(t, f, "scu")
            rules: Counter[str] = Counter()
            for r in c.results:
                rules.update(r.rules)
            text = ", ".join(f"{k} {v}" for k, v in sorted(rules.items())) or "—"
            rollbacks = sum(r.rollbacks for r in c.results)
            steps = sum(r.evals[-1][0] for r in c.results if r.evals) or 1
            per_k = 1000 * sum(r.reversals for r in c.results) / steps
            rows.append([t, f"x{f:g}", text, str(rollbacks), f"{per_k:.2f}"])
    header = ["task", "LR", "applied S-SCU actions (all seeds)", "rollbacks"]
    header.append("reversals / 1k steps")
    return table(header, rows, "llllr")


def regret_plot(a: Analysis, task: str) -> str:
    """Mean regret by initial LR, one curve per arm, as plotext text (no colours)."""
    import plotext as plt

    fig: Any = plt.figure
    fig.clear()
    fig.plot_size(78, 20)
    fig.title(f"{task}: mean regret ({a.metric[task]}) by initial LR")
    xs = [math.log10(f) for f in a.factors]
    # the S-SCU drawn on top
    order = ("constant", "plateau", "cosine", "placebo", "scu_cosine", "scu")
    for arm in [x for x in order if x in a.arms]:
        ys = [statistics.fmean(a.cell(task, f, arm).regret) for f in a.factors]
        signal = fig.signal(xs, ys, marker=PLOT_MARKERS.get(arm, "*"))
        signal.lines()
        fig.draw(signal)  # no plotext legend: its box would hide the low-LR points
    fig.ruler("x").ticks(xs, [f"x{f:g}" for f in a.factors])
    key = "   ".join(f"{PLOT_MARKERS[arm]} = {ARM_LABELS[arm]}" for arm in a.arms)
    return str(fig.build().string(colorless=True)).rstrip() + "\n" + key


PLOT_MARKERS = {
    "constant": "c",
    "cosine": "w",
    "plateau": "p",
    "scu": "S",
    "placebo": "r",
    "scu_cosine": "s",
}


def task_info(task: Task) -> dict[str, Any]:
    """What the report says about a task (kept in the raw file's header)."""
    keys = ("name", "description", "base_lr", "base_lr_note", "metric")
    return {k: getattr(task, k) for k in keys}


def render(a: Analysis, meta: dict[str, Any]) -> str:
    command, seconds = meta.get("command", "?"), meta.get("seconds")
    tasks = [t for t in meta.get("tasks", []) if t["name"] in a.tasks]
    lines = ["## Controller: robustness to the initial learning rate", ""]
    lines += [
        "Reproduce (about "
        + (f"{seconds / 60:.0f} min" if seconds else "? min")
        + f" on {meta.get('machine', 'this machine')}):",
        "",
        "```sh",
        command,
        "```",
        "",
    ]
    lines += [
        f"Arms: {', '.join(ARM_LABELS[x] for x in a.arms)}; initial LR "
        f"{{{', '.join(f'{f:g}' for f in a.factors)}}} x the tuned base; seeds "
        f"{a.seeds} (paired: each seed sees the same init and data order in every arm). "
        "All arms share the warm-up; constant / warmup+cosine / plateau run without a "
        "controller (and so without the divergence guard); the S-SCU runs in auto mode on "
        "a constant base (it owns the decay: the S-SCU on cosine arm, when run, rides "
        "warmup+cosine instead and is measured but never a cell's best); the placebo is the "
        "same run with the same guard, but "
        "makes as many LR changes as the S-SCU applied in the paired cell, at random control "
        "steps, by random log-uniform factors in [0.5, 2], through the same proposal path. "
        f"S-SCU LR bounds: [{LR_BOUNDS[0]:g}, {LR_BOUNDS[1]:g}] x base (wider than the grid).",
        "",
    ]
    if tasks:
        lines += ["Tasks:", ""]
        for t in tasks:
            lines.append(
                f"- **{t['name']}**: {t['description']}. Tuned base LR {t['base_lr']:g} "
                f"({t['base_lr_note']}); metric: final {t['metric']}."
            )
        lines.append("")
    lines += [
        "Definitions: *regret* = an arm's final metric minus that of the cell's best arm "
        "(lowest mean), paired by seed and averaged; *mean regret* = its mean over the LR "
        "grid; *relative regret* = regret / the best arm's final val loss in the cell, "
        "averaged over every (task, LR) cell; *diverged* = final val loss non-finite or "
        f"above the initial one, or >= {DIVERGED_ROLLBACKS} rollbacks (a diverged run "
        "scores its initial loss at worst); *steps to target* = median first eval step "
        f"with the metric <= {TARGET_FACTOR:g} x the best arm's mean at LR x1 "
        "(runs that reached it / runs). 95 % CI: mean ± t(0.975, n-1) sd / sqrt(n).",
        "",
        "### Headline",
        "",
    ]
    lines += headline_table(a)
    lines.append("")
    checks, ok = verdict(a)
    lines.append("**Target met.**" if ok else "**Target not met.** Clause by clause:")
    lines.append("")
    lines += checks
    lines.append("")
    for t in a.tasks:
        lines += [
            f"### {t}",
            "",
            f"Target for steps to target: {a.metric[t]} <= {fmt(a.targets[t])}.",
            "",
        ]
        lines += task_table(a, t)
        lines += ["", "```text", regret_plot(a, t), "```", ""]
    lines += ["### What the S-SCU did", ""]
    lines += rules_table(a)
    lines += ["", NOTES.strip(), ""]
    return "\n".join(lines)


NOTES = """
### How the controller was tuned

- **Tuned on the synthetic task only.** While tuning, the controller ran on the synthetic
  task alone; on the demo it ran three times before any tuning (to see its signals) and
  then in this benchmark. The per-period signals of the demo's warmup+cosine arm (no
  controller) were looked at once, to check that the erratic-gradient threshold sits above
  what healthy demo runs show; nothing was changed after seeing the demo results.
- **At 10x the run is lost in its first 20 steps** (the loss jumps during warm-up, then sits
  at a level no later LR cut leaves: cutting the LR x0.25 or x0.1 at step 20 without a
  rollback ends exactly where doing nothing ends). The only clear signal is the gradient
  variability of that first period (synthetic: 0.93-1.05 at 10x, below 0.3 at 0.1x-3x),
  and the only cure is going back to before the damage. So the S-SCU rolls back to the
  last checkpoint with the LR x0.25 when the robust gradient-norm variability exceeds 0.8
  (x0.5 leaves a run that looks healthy, so no second rollback comes, but trains far
  worse). In an earlier version of this benchmark that rule was a separate arm, with a
  mean relative regret of 0.16 % against 11.86 % for the S-SCU without it.
- **The rule's rollbacks follow the mode** like any other proposal: applied in auto,
  waiting for an answer in ask, logged in observe. The divergence guard (non-finite
  values, a loss blow-up) still acts at once.
- **The low-LR cells hold most of the remaining regret**, and no rule reaches them: the
  S-SCU raises the LR only on a *slow* loss (a significant fall below the 1 % per period
  target), but at 0.1x and 0.3x the loss still falls by more than that per period, so the
  run is "improving" while the warmup+cosine base decays under it; the constant schedule
  wins those cells. Telling "too low" from "well tuned" needs a signal the S-SCU does not
  get yet (e.g. the alignment of consecutive updates, g_t . u_(t-1), which the trainer
  could report as one number per step), or a probe whose effect is judged against the
  pre-probe trend rather than the pre-probe level.
"""


def write_section(name: str, body: str) -> None:
    """Replace the text between this section's markers in docs/benchmarks.md (or append it)."""
    begin, end = f"<!-- bench:{name}:begin -->", f"<!-- bench:{name}:end -->"
    block = f"{begin}\n{body.rstrip()}\n{end}\n"
    text = DOC.read_text(encoding="utf-8") if DOC.exists() else DOC_HEADER
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + block + ("\n" + tail.lstrip("\n") if tail.strip() else "")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(re.sub(r"\n{3,}", "\n\n", text), encoding="utf-8")


DOC_HEADER = """# Benchmarks

Written by the scripts in `bench/` (see `bench/README.md`); each section says the command
that reproduces it. Numbers depend on the machine and move with the product: rerun them.
"""


