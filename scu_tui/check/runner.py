"""``scu-tui check``: load what the run would load, measure, estimate, report."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from scu_tui.config import Settings
from scu_tui.control.trial import KEPT_STATES as TRIAL_KEPT_STATES
from scu_tui.errors import UserError

if TYPE_CHECKING:  # only the types: the report imports MLX, loaded on use
    from scu_tui.check.ranks import RankReport
    from scu_tui.check.report import CheckResult

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
WEIGHTS_SHARE = 0.9  # weights above this share of the budget are not loaded
HUB_METADATA = ["*.json", "*.jinja", "*.txt", "tokenizer.model", "*.tiktoken"]


def _progress(text: str) -> None:
    """Progress for a person at a terminal; pipes (and tests) only get the result."""
    if sys.stderr.isatty():
        print(f"check: {text}", file=sys.stderr, flush=True)


def _hub_folder(repo: str) -> tuple[Path, bool]:
    """A hub model's folder: the cached snapshot if its weights are here, else its config
    and tokenizer only (kilobytes, not the weights' gigabytes)."""
    from huggingface_hub import snapshot_download

    try:
        cached = Path(snapshot_download(repo, local_files_only=True))
        if any(cached.glob("*.safetensors")) and (cached / "config.json").is_file():
            return cached, True
    except Exception:  # not in the cache: fetch the small files below
        pass
    try:
        folder = Path(snapshot_download(repo, allow_patterns=HUB_METADATA))
    except Exception as exc:  # the hub client raises many types when offline
        first = str(exc).splitlines()[0] if str(exc) else "no details"
        raise UserError(
            f"model {repo}: could not get its config.json from the Hugging Face hub "
            f"({type(exc).__name__}: {first}); offline, pass --model with a local folder "
            "holding at least its config.json"
        ) from None
    if not (folder / "config.json").is_file():
        raise UserError(f"model {repo}: no config.json on the hub: not an mlx-lm model")
    return folder, False


def model_folder(path: str) -> tuple[Path, bool]:
    """``(folder, has weights)`` for ``model.path``; bad input is a UserError."""
    from scu_tui.training.model import HUB_ID, resolve_model_path

    resolved = resolve_model_path(path)
    local = Path(resolved).expanduser()
    if local.exists():
        if not local.is_dir():
            raise UserError(f"model {path}: not a directory (expected a folder with config.json)")
        if not (local / "config.json").is_file():
            raise UserError(
                f"model {path}: no config.json in this folder: not an mlx-lm / Hugging Face model"
            )
        return local, any(local.glob("*.safetensors"))
    if not HUB_ID.match(resolved):
        raise UserError(f"model {path}: no such directory (and not a hub id like 'org/name')")
    return _hub_folder(resolved)


def _tokenizer(folder: Path) -> Any:
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        return None
    from mlx_lm.utils import load_tokenizer

    try:
        return load_tokenizer(folder)
    except Exception as exc:  # transformers raises many types for a broken tokenizer
        raise UserError(f"model {folder}: its tokenizer cannot be loaded: {exc}") from None


def _rows_only(settings: Settings) -> Any:
    """Row counts and format without a tokenizer."""
    from scu_tui.check.data_report import rows_report
    from scu_tui.training.data import _read_raw, detect_format, resolve_data_path

    raw, notes = _read_raw(resolve_data_path(settings.data.path), settings.training.seed)
    train = raw["train"]
    fmt = detect_format(list(train.rows.column_names), settings.data.format, train.label)
    return rows_report(
        fmt, {name: (part.label, len(part.rows)) for name, part in raw.items()}, notes
    )


def check(settings: Settings, *, find_lr: bool = False, probe_mode: str = "auto") -> Any:
    """Everything the check finds, as a ``CheckResult``.

    ``probe_mode``: ``"auto"`` runs the probe's steps when they take at most
    ``PROBE_BUDGET_SECONDS`` on this machine (said up front), ``"always"`` runs them
    however long, ``"never"`` gives the estimate from ``config.json`` alone."""
    import mlx.core as mx

    from scu_tui.check import environment, memory
    from scu_tui.check.data_report import report as data_report
    from scu_tui.check.model_facts import facts, facts_from_config, read_config
    from scu_tui.check.report import CheckResult, Limits
    from scu_tui.training.data import load_data

    t = settings.training
    gc_on = t.grad_checkpoint
    _progress("environment")
    env = environment.detect()
    folder, has_weights = model_folder(settings.model.path)
    _progress(f"model config {folder}")
    states = memory.OPTIMIZER_STATES[t.optimizer]
    model_facts = replace(
        facts_from_config(folder, settings.lora, settings.model.path), optimizer_states=states
    )
    notes: list[str] = []
    if find_lr and t.optimizer == "prodigy":
        notes.append(
            '--find-lr: not run with training.optimizer = "prodigy", which estimates its own '
            "step size (its training.learning_rate is a factor on that estimate, 1 by default)"
        )
        find_lr = False
    if has_weights and model_facts.weight_bytes > WEIGHTS_SHARE * env.memory_limit:
        notes.append(
            f"the weights alone ({model_facts.weight_bytes / 1e9:.1f} GB) exceed what this "
            "machine gives a run: not loaded, the estimate is from config.json"
        )
        has_weights = False
    coeffs = memory.from_config(model_facts, gc_on)
    other = memory.from_config(model_facts, not gc_on)
    timing = None
    curve = None
    cost = None
    if has_weights:
        from scu_tui.check.probe import calibration_widths
        from scu_tui.check.probe_cost import PROBE_BUDGET_SECONDS, layer_speed, probe_cost
        from scu_tui.check.units import duration

        speed = layer_speed(model_facts)
        cost = probe_cost(
            model_facts,
            batch=t.batch_size,
            widths=calibration_widths(settings.data.max_seq_length),
            grad_checkpoint=gc_on,
            speed=speed,
            ran=probe_mode != "never",
        )
        _progress(
            f"the probe's steps: about {duration(cost.probe_seconds)} on this machine "
            f"({speed / 1e9:.3g} GFLOP/s on this model's layers)"
        )
        if probe_mode == "never":
            notes.append("--config-only: no step was run, the estimate is from config.json")
            has_weights = False
        elif probe_mode == "auto" and cost.probe_seconds > PROBE_BUDGET_SECONDS:
            notes.append(
                f"the probe's steps would take about {duration(cost.probe_seconds)} on this "
                f"machine ({speed / 1e9:.3g} GFLOP/s on this model's {model_facts.dtype} "
                "layers): not run, the estimate is from config.json; --probe runs them anyway"
            )
            cost = replace(cost, ran=False)
            has_weights = False
    if has_weights:
        from scu_tui.check.probe import SAFE_SHARE, Probe
        from scu_tui.training.model import apply_lora, load_model

        _progress("loading the model and data")
        model, tokenizer = load_model(str(folder))
        bundle = load_data(settings.data, tokenizer, t.seed)
        mx.random.seed(t.seed)
        apply_lora(model, settings.lora, settings.model.path)
        model_facts = replace(
            facts(model, read_config(folder), settings.lora), optimizer_states=states
        )
        data = data_report(bundle, settings)
        probe = Probe(model, bundle, settings, model_facts, env.memory_limit, _progress)
        top = probe.calibration_widths()[-1]
        safe = (
            max(memory.estimate(model_facts, c, 1, top).total for c in (coeffs, other))
            <= SAFE_SHARE * env.memory_limit
        )
        if safe:
            _progress("measuring memory")
            other = probe.calibrate(not gc_on)
            coeffs = probe.calibrate(gc_on)
            _progress("timing steps")
            timing = probe.time_steps(data, coeffs)
        else:
            notes.append(
                "even a one-row step may not fit: nothing was run, the estimate is from config.json"
            )
        probe.release()
        if find_lr and safe:
            from scu_tui.check.find_lr import lr_range_test

            _progress("LR range test")
            curve = lr_range_test(model, bundle, settings)
        del model
    else:
        tokenizer = _tokenizer(folder)
        if tokenizer is not None:
            _progress("reading and tokenizing the data")
            bundle = load_data(settings.data, tokenizer, t.seed)
            data = data_report(bundle, settings)
        else:
            data = _rows_only(settings)
        if find_lr:
            notes.append(
                "--find-lr needs the model's weights and the probe: not run"
                if cost is not None
                else "--find-lr needs the model's weights: not run"
            )
    width = data.max_width or settings.data.max_seq_length
    # the kept states, and the run's first one beside them for its first steps (and the
    # LR trial's two, held then too)
    kept = settings.scu.snapshots_kept + 1 if settings.scu.enabled else 0
    if kept and settings.scu.lr_search and settings.scu.lr_trial:
        kept += TRIAL_KEPT_STATES
    est = memory.estimate(
        model_facts,
        coeffs,
        t.batch_size,
        width,
        grad_checkpoint=gc_on,
        accumulation=t.gradient_accumulation_steps,
        kept_states=kept,
    )
    est_other = memory.estimate(
        model_facts,
        other,
        t.batch_size,
        width,
        grad_checkpoint=not gc_on,
        accumulation=t.gradient_accumulation_steps,
        kept_states=kept,
    )
    limit = env.memory_limit
    kw = {"accumulation": t.gradient_accumulation_steps, "kept_states": kept}
    limits = Limits(
        batch=memory.largest_batch(model_facts, coeffs, width, limit, grad_checkpoint=gc_on, **kw),
        width=memory.largest_width(
            model_facts, coeffs, t.batch_size, limit, grad_checkpoint=gc_on, **kw
        ),
        batch_other=memory.largest_batch(
            model_facts, other, width, limit, grad_checkpoint=not gc_on, **kw
        ),
        width_other=memory.largest_width(
            model_facts, other, t.batch_size, limit, grad_checkpoint=not gc_on, **kw
        ),
    )
    return CheckResult(
        settings=settings,
        env=env,
        model_source="weights" if timing is not None or has_weights else "config",
        facts=model_facts,
        data=data,
        estimate=est,
        other=est_other,
        limits=limits,
        timing=timing,
        curve=curve,
        notes=notes,
        probe_cost=cost,
    )


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def check_ranks(ranks: int | None, settings: Settings) -> None:
    """``--ranks N``: at least 2, and the global batch must divide by N (as for a run)."""
    if ranks is None:
        return
    if ranks < 2:
        raise UserError(f"--ranks {ranks}: expected a number of ranks >= 2 (one is always run)")
    from scu_tui.training.distributed import check_batch

    check_batch(settings.training.batch_size, ranks)


def _probe_ranks(result: CheckResult, ranks: int) -> RankReport:
    """One rank against ``ranks`` over loopback, after the check let go of its model."""
    import mlx.core as mx

    from scu_tui.check.ranks import probe_ranks

    mx.clear_cache()
    _progress(f"one rank against {ranks} over loopback")
    return probe_ranks(
        result.settings,
        ranks,
        gradient_bytes=result.facts.trainable_bytes,
        seconds_per_step=result.timing.seconds_per_step if result.timing else None,
        peak_bytes=result.estimate.total,
        memory_limit=result.env.memory_limit,
        progress=_progress,
    )


def run_check(
    settings: Settings,
    *,
    as_json: bool = False,
    find_lr: bool = False,
    ranks: int | None = None,
    probe: str = "auto",
    out: TextIO | None = None,
) -> int:
    """The command: print the report (text or one JSON object); exit code 0.

    ``ranks``: also train the run on one rank and on that many over loopback."""
    from scu_tui.check import cache

    check_ranks(ranks, settings)
    result = check(settings, find_lr=find_lr, probe_mode=probe)
    if ranks is not None:
        result.ranks = _probe_ranks(result, ranks)
    summary = _finite(result.to_json())
    cache.record(settings, summary)
    stream = out or sys.stdout
    if as_json:
        stream.write(json.dumps(summary, allow_nan=False) + "\n")
    else:
        stream.write(result.to_text())
    stream.flush()
    return 0
