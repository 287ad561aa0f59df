"""Typed, validated settings: defaults < preset < ``--set`` < dedicated flags.

Every key of a preset is a field of one of the section dataclasses below, with a
default and a one-line doc. Loading is strict: a TOML syntax error, an unknown key
or a value of the wrong type or range raises :class:`ConfigError` with a message
that names the file, line, key and what is allowed, before anything heavy loads.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import tomllib
import types
import unicodedata
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import tomli_w

from scu_tui.errors import UserError
from scu_tui.protocol import Mode

#: The model and data paths that mean "the tiny model and data set shipped in the package".
EMBEDDED_DEMO = "@demo"

FORMATS = ("auto", "text", "completions", "chat")
SCHEDULES = ("constant", "cosine", "plateau", "wsd")
#: the names of ``scu_tui.training.optimizers.OPTIMIZERS`` (kept here: config imports no MLX)
OPTIMIZERS = ("adamw", "schedule_free", "prodigy")
FINE_TUNE_TYPES = ("lora", "dora", "full")  # as mlx-lm's fine_tune_type
MODES = tuple(mode.value for mode in Mode)


class ConfigError(UserError):
    """A user mistake in a preset, flag or ``--set``; the message says where and what."""


Check = Callable[[Any], str | None]


def setting(default: Any, doc: str, check: Check | None = None) -> Any:
    """A settings field with its one-line doc and an optional value check."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"doc": doc, "check": check})
    return field(default=default, metadata={"doc": doc, "check": check})


# --- value checks: each returns None when fine, else what is allowed ------------------------

#: Step counts above this are typos (a billion optimizer steps is years of training).
MAX_COUNT = 10**9
#: ``training.seed`` feeds ``mx.random.seed`` (which takes 0 <= s < 2**64) as
#: ``seed * 1_000_003 + step`` and numpy's ``default_rng``: below 2**32 every use is safe.
SEED_LIMIT = 2**32
#: A run folder is ``<name>-YYYYmmdd-HHMMSS``: file names are at most 255 bytes.
NAME_BYTES = 200


def _finite(v: Any) -> bool:
    """True for ints (of any size) and finite floats: nan and inf are never a setting."""
    return isinstance(v, int) or math.isfinite(v)


def one_of(*choices: str) -> Check:
    return lambda v: None if v in choices else "one of " + ", ".join(repr(c) for c in choices)


def at_least(low: float, high: float | None = None) -> Check:
    """``low <= v`` (and ``v <= high`` when given)."""

    def check(v: Any) -> str | None:
        ok = _finite(v) and v >= low and (high is None or v <= high)
        return None if ok else (f">= {low}" if high is None else f"between {low} and {high}")

    return check


def above(low: float, high: float | None = None) -> Check:
    """``low < v`` (and ``v <= high`` when given)."""

    def check(v: Any) -> str | None:
        ok = _finite(v) and v > low and (high is None or v <= high)
        return None if ok else (f"> {low}" if high is None else f"> {low} and <= {high}")

    return check


def in_range(low: float, high: float, *, high_open: bool = False) -> Check:
    def check(v: Any) -> str | None:
        ok = _finite(v) and (low <= v < high if high_open else low <= v <= high)
        return None if ok else f"between {low} and {high}" + (" (exclusive)" if high_open else "")

    return check


def bounds(low: float, high: float | None = None, *, low_open: bool = False) -> Check:
    """``[lo, hi]`` with ``lo <= hi`` and both within ``(low|[low, high]``."""

    def check(v: Any) -> str | None:
        if len(v) == 2 and all(_finite(x) for x in v):
            lo, hi = v
            lo_ok = lo > low if low_open else lo >= low
            if lo_ok and (high is None or hi <= high) and lo <= hi:
                return None
        lower = f"> {low}" if low_open else f">= {low}"
        upper = f" and <= {high}" if high is not None else ""
        return f"[low, high] with low <= high, both {lower}{upper}"

    return check


def seed_range(v: Any) -> str | None:
    return None if 0 <= v < SEED_LIMIT else f"an integer from 0 to {SEED_LIMIT - 1}"


def daubechies(v: Any) -> str | None:
    m = re.fullmatch(r"db(\d+)", v)
    return None if m and 1 <= int(m.group(1)) <= 38 else "a Daubechies wavelet 'db1' … 'db38'"


def _has_control(v: str) -> bool:
    return any(unicodedata.category(c) == "Cc" for c in v)


def nonempty(v: Any) -> str | None:
    """A path or name: not blank, no NUL or other control characters (never in a real path)."""
    ok = v.strip() and not _has_control(v)
    return None if ok else "a non-empty string, no control characters"


def file_name(v: Any) -> str | None:
    """One plain file-name component: the run folder is ``runs/<name>-<timestamp>``."""
    ok = (
        v.strip()
        and not _has_control(v)
        and not any(c in v for c in "/\\")
        and not v.startswith(".")
        and len(v.encode("utf-8", "surrogatepass")) <= NAME_BYTES
    )
    return (
        None
        if ok
        else "a plain file name: not empty, no '/' or '\\', not starting with '.', "
        f"no control characters, at most {NAME_BYTES} bytes"
    )


def layers(v: Any) -> str | None:
    return None if v == -1 or 1 <= v <= MAX_COUNT else f"-1 (all blocks) or 1 to {MAX_COUNT}"


def batches(v: Any) -> str | None:
    return None if v == -1 or 1 <= v <= MAX_COUNT else f"-1 (the whole split) or 1 to {MAX_COUNT}"


def count(low: int) -> Check:
    """A step count or period: from ``low`` to :data:`MAX_COUNT`."""
    return at_least(low, MAX_COUNT)


# --- the schema --------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSettings:
    path: str = setting(
        EMBEDDED_DEMO, "local model directory or hub id; '@demo' is the embedded model", nonempty
    )


@dataclass(frozen=True)
class LoraSettings:
    type: str = setting(
        "lora",
        "lora | dora | full (mlx-lm's fine_tune_type; full trains the num_layers top blocks)",
        one_of(*FINE_TUNE_TYPES),
    )
    rank: int = setting(8, "LoRA rank r", at_least(1, 65536))
    alpha: float = setting(16.0, "LoRA alpha; mlx-lm scale = alpha / rank", above(0, 1e6))
    dropout: float = setting(0.0, "dropout on the LoRA input", in_range(0, 1, high_open=True))
    num_layers: int = setting(-1, "transformer blocks to adapt, from the top; -1 = all", layers)
    keys: list[str] = setting([], "module keys to adapt (e.g. 'self_attn.q_proj'); [] = defaults")
    dequantize: bool = setting(
        False, "train on a float copy of a quantized base (needed by 'full'; more memory)"
    )


@dataclass(frozen=True)
class DataSettings:
    path: str = setting(
        EMBEDDED_DEMO,
        "dir with train/valid(/test).jsonl, a jsonl/parquet/csv file, or a hub id",
        nonempty,
    )
    format: str = setting("auto", "auto | text | completions | chat", one_of(*FORMATS))
    max_seq_length: int = setting(2048, "longer sequences are truncated", at_least(8, 2**20))
    mask_prompt: bool = setting(False, "train on completions only (no loss on the prompt)")


@dataclass(frozen=True)
class TrainingSettings:
    batch_size: int = setting(4, "sequences per micro-batch", at_least(1, 65536))
    gradient_accumulation_steps: int = setting(
        1, "micro-batches per optimizer step", at_least(1, 65536)
    )
    learning_rate: float = setting(1e-4, "base learning rate", above(0, 10))
    optimizer: str = setting(
        "adamw",
        "adamw | schedule_free | prodigy (Prodigy sets its own step size)",
        one_of(*OPTIMIZERS),
    )
    schedule: str = setting(
        "cosine",
        "base schedule the S-SCU multiplies: constant | cosine | plateau | wsd",
        one_of(*SCHEDULES),
    )
    decay_fraction: float = setting(
        0.2, "wsd: the last fraction of max_steps over which the LR decays", at_least(0.0, 1.0)
    )
    weight_decay: float = setting(0.0, "decoupled weight decay", at_least(0, 10))
    max_steps: int = setting(1000, "optimizer steps to train", count(1))
    warmup_steps: int = setting(0, "linear warm-up steps before the schedule", count(0))
    eval_every: int = setting(200, "steps between validation passes", count(1))
    eval_batches: int = setting(25, "validation batches per pass; -1 = the whole split", batches)
    save_every: int = setting(500, "steps between checkpoints", count(1))
    keep_checkpoints: int = setting(3, "newest checkpoints kept on disk; 0 = keep all", count(0))
    report_every: int = setting(10, "steps between headless report lines", count(1))
    samples: int = setting(
        0, "validation prompts answered at each evaluation, shown as they improve", count(0)
    )
    compare_samples: int = setting(
        4, "test prompts the base model and the adapters answer when the run ends", count(0)
    )
    memory_limit_gb: float = setting(
        0.0,
        "pause with a checkpoint when peak memory nears this (0: what this machine gives a run)",
        at_least(0.0, 1e6),
    )
    compare_at_end: bool = setting(
        True, "compare the base model and the best adapters on the test split at the end"
    )
    grad_clip: float = setting(0.0, "clip the global gradient norm to this; 0 = off", at_least(0))
    grad_checkpoint: bool = setting(
        False, "recompute each block's activations in the backward pass: less memory, slower"
    )
    seed: int = setting(0, "seed for data order, LoRA init and dropout", seed_range)


@dataclass(frozen=True)
class ScuSettings:
    enabled: bool = setting(True, "run the S-SCU controller")
    mode: str = setting("ask", "auto | ask | observe", one_of(*MODES))
    control_frequency: int = setting(50, "analyse every N steps", count(1))
    target_loss_improvement: float = setting(
        0.01, "relative loss improvement expected per period", above(0, 1)
    )
    window: int = setting(256, "steps of history analysed", at_least(8, 2**20))
    wavelet: str = setting("db4", "Daubechies wavelet for the entropy analysis", daubechies)
    levels: int = setting(4, "wavelet decomposition levels (capped by the window)", in_range(1, 12))
    lr_bounds: list[float] = setting(
        [1e-6, 1e-3], "learning-rate limits", bounds(0, 10, low_open=True)
    )
    weight_decay_bounds: list[float] = setting([0.0, 1.0], "weight-decay limits", bounds(0, 10))
    dropout_bounds: list[float] = setting([0.0, 0.3], "LoRA-dropout limits", bounds(0, 0.99))
    accumulation_bounds: list[int] = setting(
        [1, 32], "gradient-accumulation limits", bounds(1, 65536)
    )
    cooldown: int = setting(100, "steps before the same knob moves again", count(0))
    proposal_ttl: int = setting(100, "steps an unanswered proposal waits in ask mode", count(1))
    snapshot_every: int = setting(
        5, "steps between the good states kept in memory for a rollback", count(1)
    )
    snapshots_kept: int = setting(
        4,
        "good states kept in memory, the newest, the best and the newest validation "
        "pass's (LoRA weights + optimizer state each); the run's first state is kept "
        "beside them for its first 50 steps",
        in_range(1, 64),
    )
    lr_search: bool = setting(
        True,
        "after the warm-up, raise the LR every few steps while the updates keep pointing "
        "the same way, halve it while they undo one another (the start-up LR search)",
    )
    lr_trial: bool = setting(
        True,
        "at the warm-up's end, train the next 20 steps twice from the same state on the "
        "same batches, at the LR and at half of it, and go on with half only when its loss "
        "is clearly lower (the LR trial; auto mode, one process, runs of 400 steps or more; "
        "the repeated steps count against max_steps)",
    )


@dataclass(frozen=True)
class UiSettings:
    theme: str = setting("scu-dark", "colour theme name", nonempty)
    refresh_hz: float = setting(8.0, "dashboard refreshes per second", in_range(0.5, 60))
    notify: bool = setting(
        True, "bell and desktop notification (OSC 9) when a proposal waits or the run ends"
    )


@dataclass(frozen=True)
class Settings:
    name: str = setting("custom", "preset name", file_name)
    description: str = setting("", "one line shown in preset lists")
    model: ModelSettings = field(default_factory=ModelSettings)
    lora: LoraSettings = field(default_factory=LoraSettings)
    data: DataSettings = field(default_factory=DataSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    scu: ScuSettings = field(default_factory=ScuSettings)
    ui: UiSettings = field(default_factory=UiSettings)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, updates: Mapping[str, Any], source: str = "settings") -> Settings:
        """A copy with dotted-key updates applied and validated (``{"training.seed": 1}``)."""
        nested: dict[str, Any] = {}
        for dotted, value in updates.items():
            _set_dotted(nested, dotted, value)
        return merge(self, nested, source=source)


def _section_types() -> dict[str, type]:
    hints = get_type_hints(Settings)
    return {
        name: hint
        for name, hint in hints.items()
        if isinstance(hint, type) and dataclasses.is_dataclass(hint)
    }


#: section name -> its dataclass, e.g. ``"training" -> TrainingSettings``
SECTIONS: dict[str, type] = _section_types()


def all_keys() -> list[str]:
    """Every valid dotted key, in schema order."""
    keys = [f.name for f in dataclasses.fields(Settings) if f.name not in SECTIONS]
    for section, cls in SECTIONS.items():
        keys += [f"{section}.{f.name}" for f in dataclasses.fields(cls)]
    return keys


def key_doc(dotted: str) -> str:
    cls, name = _owner(dotted)
    return str(next(f for f in dataclasses.fields(cls) if f.name == name).metadata["doc"])


def _owner(dotted: str) -> tuple[type, str]:
    section, _, name = dotted.rpartition(".")
    return (SECTIONS[section] if section else Settings), name


# --- loading, validation and merging ----------------------------------------------------


@dataclass(frozen=True)
class Source:
    """Where settings came from, for error messages: a file (with its text) or a flag."""

    label: str
    text: str | None = None

    def where(self, dotted: str | None = None) -> str:
        if self.text is None or dotted is None:
            return self.label
        line = _find_key_line(self.text, dotted)
        return f"{self.label}:{line}" if line else self.label


def _find_key_line(text: str, dotted: str) -> int | None:
    """The 1-based line where ``dotted`` is assigned in a TOML text (best effort)."""
    section, _, name = dotted.rpartition(".")
    current = ""
    key_re = re.compile(rf"^\s*(\"?){re.escape(name)}\1\s*=")
    for number, line in enumerate(text.splitlines(), start=1):
        header = re.match(r"^\s*\[\s*([^\]]+?)\s*\]", line)
        if header:
            current = header.group(1).strip()
            if current == dotted:
                return number
            continue
        if current == section and key_re.match(line):
            return number
        if not current and key_re.match(line) and "." in name:
            return number
    dotted_re = re.compile(rf"^\s*{re.escape(dotted)}\s*=")
    for number, line in enumerate(text.splitlines(), start=1):
        if dotted_re.match(line):
            return number
    return None


def parse_toml(text: str, label: str) -> dict[str, Any]:
    """Parse TOML, turning a syntax error into ``label:line:column: message``."""
    try:
        return tomllib.loads(text)
    except RecursionError:
        raise ConfigError(f"{label}: invalid TOML: nested too deeply") from None
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        m = re.search(r"\(at line (\d+), column (\d+)\)", msg)
        if m:
            detail = msg[: m.start()].strip()
            raise ConfigError(
                f"{label}:{m.group(1)}:{m.group(2)}: invalid TOML: {detail}"
            ) from None
        raise ConfigError(f"{label}: invalid TOML: {msg}") from None


def load_file(path: Path, base: Settings | None = None) -> Settings:
    """Read a preset file over ``base`` (defaults when None)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read preset: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None
    data = parse_toml(text, str(path))
    return merge(base or Settings(), data, source=Source(str(path), text))


def merge(base: Settings, data: Mapping[str, Any], source: Source | str) -> Settings:
    """Overlay a nested mapping on ``base``, validating every key and value."""
    src = Source(source) if isinstance(source, str) else source
    if not isinstance(data, Mapping):
        raise ConfigError(f"{src.where()}: expected a table of settings, got {_type_name(data)}")
    top: dict[str, Any] = {}
    for key, value in data.items():
        if key in SECTIONS:
            if not isinstance(value, Mapping):
                raise ConfigError(f"{src.where(key)}: '{key}' must be a table ([{key}])")
            top[key] = _merge_section(getattr(base, key), key, value, src)
        else:
            top[key] = _checked(Settings, key, key, value, src)
    return dataclasses.replace(base, **top)


def _merge_section(current: Any, section: str, data: Mapping[str, Any], src: Source) -> Any:
    changes = {
        key: _checked(SECTIONS[section], key, f"{section}.{key}", value, src)
        for key, value in data.items()
    }
    return dataclasses.replace(current, **changes)


def _checked(cls: type, name: str, dotted: str, value: Any, src: Source) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if name not in fields or name in SECTIONS:
        raise ConfigError(f"{src.where(dotted)}: unknown key {_quoted(dotted)}{_suggest(dotted)}")
    f = fields[name]
    hint = get_type_hints(cls)[name]
    where = src.where(dotted)
    coerced = _coerce(hint, value)
    if coerced is _BAD:
        raise ConfigError(
            f"{where}: {dotted} = {_show(value)}: expected {_describe(hint)}, "
            f"got {_type_name(value)}"
        )
    check: Check | None = f.metadata.get("check")
    problem = check(coerced) if check else None
    if problem:
        numbers = coerced if isinstance(coerced, list) else [coerced]
        finite = all(_finite(v) for v in numbers if isinstance(v, int | float))
        must = "must be" if finite else "must be finite and"
        raise ConfigError(f"{where}: {dotted} = {_show(value)}: {must} {problem}")
    return coerced


def _quoted(key: str) -> str:
    """``'key'``, or a JSON string when the key holds characters that would not show."""
    return f"'{key}'" if key.isprintable() else json.dumps(key)


def _suggest(dotted: str) -> str:
    """`` (did you mean 'x'?)`` with the closest valid key, or nothing."""
    keys = all_keys()
    section, _, leaf = dotted.rpartition(".")

    def initials(key: str) -> str:
        return "".join(part[:1] for part in key.rpartition(".")[2].split("_"))

    def same_section(key: str) -> bool:
        return not section or key.rpartition(".")[0] == section

    candidates = (
        [k for k in keys if k.rpartition(".")[2] == leaf]
        or [k for k in keys if initials(k) == leaf and same_section(k)]
        or difflib.get_close_matches(dotted, keys, n=1, cutoff=0.6)
        or [k for k in keys if initials(k) == leaf]
    )
    if not candidates:
        leaves = {k.rpartition(".")[2]: k for k in keys}
        near = difflib.get_close_matches(leaf, list(leaves), n=1, cutoff=0.6)
        candidates = [leaves[near[0]]] if near else []
    return f" (did you mean '{candidates[0]}'?)" if candidates else ""


_BAD = object()


def _coerce(hint: Any, value: Any) -> Any:
    """``value`` converted to ``hint``'s type, or ``_BAD``. Ints pass as floats, not bools."""
    origin = get_origin(hint)
    if origin is list:
        (item,) = get_args(hint)
        if not isinstance(value, list | tuple):
            return _BAD
        items = [_coerce(item, v) for v in value]
        if any(i is _BAD for i in items):
            return _BAD
        return items
    if origin in (Union, types.UnionType):
        return _BAD
    if hint is bool:
        return value if isinstance(value, bool) else _BAD
    if isinstance(value, bool):
        return _BAD
    if hint is float and isinstance(value, int | float):
        return float(value)
    if hint is int and isinstance(value, int):
        return value
    if hint is str and isinstance(value, str):
        return value
    return _BAD


def _describe(hint: Any) -> str:
    if get_origin(hint) is list:
        return f"a list of {_describe(get_args(hint)[0])}s"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        hint, str(hint)
    )


def _type_name(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    names |= {list: "a list", dict: "a table"}
    return names.get(type(value), type(value).__name__)


def _show(value: Any) -> str:
    """A value as an inline TOML literal (lists and tables on one line)."""
    try:
        if isinstance(value, list | tuple):
            return "[" + ", ".join(_show(v) for v in value) + "]"
        if isinstance(value, Mapping):
            items = ", ".join(f"{_show(str(k))} = {_show(v)}" for k, v in value.items())
            return "{" + (f" {items} " if items else "") + "}"
        return tomli_w.dumps({"v": value}).strip()[4:]
    except (TypeError, ValueError):
        return repr(value)


def _set_dotted(nested: dict[str, Any], dotted: str, value: Any) -> None:
    section, _, name = dotted.rpartition(".")
    if section:
        nested.setdefault(section, {})[name] = value
    else:
        nested[name] = value


def parse_assignment(text: str) -> tuple[str, Any]:
    """``section.key=value`` from ``--set``; the value is TOML, or a bare string if not TOML."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {text}: expected section.key=value")
    if key not in all_keys():
        raise ConfigError(f"--set {text}: unknown key {_quoted(key)}{_suggest(key)}")
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except (tomllib.TOMLDecodeError, RecursionError):
        if re.fullmatch(r"[\w./:@~+-]+", raw) and not re.fullmatch(r"[-+]?[\d.eE_+-]+", raw):
            value = raw  # a bare word or path, e.g. --set model.path=models/tiny
        else:
            raise ConfigError(
                f'--set {text}: the value is not valid TOML (quote strings: key="text")'
            ) from None
    return key, value


def apply_assignments(base: Settings, assignments: list[str]) -> Settings:
    for text in assignments:
        key, value = parse_assignment(text)
        nested: dict[str, Any] = {}
        _set_dotted(nested, key, value)
        base = merge(base, nested, source=f"--set {text}")
    return base


# --- writing ----------------------------------------------------------------------------


def iter_items(settings: Settings) -> Iterator[tuple[str, Any]]:
    """``(dotted key, value)`` for every setting, in schema order."""
    for key in all_keys():
        section, _, name = key.rpartition(".")
        owner = getattr(settings, section) if section else settings
        yield key, getattr(owner, name)


def to_toml(settings: Settings, *, comments: bool = True) -> str:
    """Every setting as TOML (through tomli-w), each key with its doc as a comment."""
    lines: list[str] = []
    current = ""
    for key, value in iter_items(settings):
        section, _, name = key.rpartition(".")
        if section != current:
            lines += ["", f"[{section}]"]
            current = section
        body = f"{name} = {_show(value)}"
        if comments:
            body = f"{body:<40} # {key_doc(key)}"
        lines.append(body)
    return "\n".join(lines).lstrip("\n") + "\n"


def save_toml(settings: Settings, path: Path) -> None:
    """Write settings as a preset file, atomically (tomli-w, no comments)."""
    data = settings.to_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(tomli_w.dumps(data), encoding="utf-8")
    tmp.replace(path)
