"""Data through the ``datasets`` library: local folders, single files or hub ids.

Rows are checked and tokenized once, up front, so a bad line is reported with its file
and line number before training starts, and batches can be sorted by true length.
The training stream is deterministic and resumable: its position is two integers.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scu_tui.config import EMBEDDED_DEMO, DataSettings
from scu_tui.errors import UserError

SPLIT_NAMES = {"train": ("train",), "valid": ("valid", "validation", "val"), "test": ("test",)}
FILE_TYPES = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
FORMAT_KEYS = {"chat": ("messages",), "completions": ("prompt", "completion"), "text": ("text",)}
HELD_OUT_FRACTION = 0.1
PAD_TO = 32


def resolve_data_path(path: str) -> str:
    if path == EMBEDDED_DEMO:
        from scu_tui.demo import DATA_DIR

        return str(DATA_DIR)
    return path


@dataclass
class Split:
    """One tokenized split: token ids and the prompt offset (for mask_prompt) per row."""

    name: str
    source: str
    sequences: list[tuple[list[int], int]]
    truncated: int = 0

    def __len__(self) -> int:
        return len(self.sequences)


@dataclass
class DataBundle:
    train: Split
    valid: Split
    test: Split | None
    format: str
    notes: list[str] = field(default_factory=list)


# --- reading -------------------------------------------------------------------------------


@dataclass
class RawSplit:
    """One split as read, before tokenization, and where each of its rows came from."""

    label: str  # the split as a whole, in messages
    rows: Any  # a datasets.Dataset
    file: str | None = None  # the file its rows were read from (None: the hub)
    lines: list[int] | None = None  # jsonl: the file's 1-based line of each original row
    order: list[int] | None = None  # a held-out part: the original row of each of its rows

    def where(self, index: int) -> str:
        """``file:line`` (or ``file row N``) of row ``index``, in the file as the user has it."""
        original = self.order[index] if self.order is not None else index
        if self.lines is not None:
            return f"{self.file}:{self.lines[original]}"
        return f"{self.file or self.label} row {original + 1}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _root_cause(exc: BaseException) -> str:
    """The first line of the innermost cause: datasets wraps the parser's own words in
    'An error occurred while generating the dataset'."""
    seen = {id(exc)}
    while exc.__cause__ is not None and id(exc.__cause__) not in seen:
        exc = exc.__cause__
        seen.add(id(exc))
    return _first_line(exc)


def _check_jsonl(path: Path) -> list[int]:
    """The 1-based line number of each row; the first malformed line is an error with its
    number (datasets only says 'parse error'). Blank lines hold no row, as in datasets."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"data {path}: cannot be read: {exc.strerror or exc}") from None
    numbers: list[int] = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UserError(
                f"{path}:{number}: not UTF-8 text (byte {exc.start + 1} of the line)"
            ) from None
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(
                f"{path}:{number}: not valid JSON ({exc.msg} at column {exc.colno})"
            ) from None
        except (ValueError, RecursionError) as exc:
            raise UserError(f"{path}:{number}: not valid JSON ({_first_line(exc)})") from None
        if not isinstance(row, dict):
            raise UserError(
                f"{path}:{number}: expected a JSON object per line, got {type(row).__name__}"
            )
        numbers.append(number)
    return numbers


def _is_json_array(path: Path) -> bool:
    """A ``.json`` file holding one array of rows (not JSON lines)."""
    with open(path, "rb") as fh:
        return fh.read(4096).lstrip().startswith(b"[")


def _quiet_datasets() -> Any:
    """``datasets``, with its progress bars off: the run reports progress itself."""
    import datasets

    datasets.disable_progress_bars()
    # its read errors are logged too: the one line the user gets says the same, with the file
    datasets.utils.logging.set_verbosity(datasets.utils.logging.CRITICAL)
    return datasets


def _read_file(path: Path) -> RawSplit:
    """One file as a ``datasets.Dataset``, with the line of each row for messages."""
    datasets = _quiet_datasets()

    kind = FILE_TYPES.get(path.suffix.lower())
    if kind is None:
        raise UserError(
            f"data {path}: unsupported file type '{path.suffix}' (expected .jsonl, .parquet, .csv)"
        )
    lines = None
    if kind == "json" and not (path.suffix.lower() == ".json" and _is_json_array(path)):
        lines = _check_jsonl(path)
        if not lines:
            raise UserError(f"data {path}: no rows (an empty file)")
    try:
        ds = datasets.load_dataset(kind, data_files=str(path), split="train")
    except Exception as exc:
        raise UserError(f"data {path}: cannot be read as {kind}: {_root_cause(exc)}") from None
    if lines is not None and len(lines) != len(ds):
        lines = None  # rows and lines do not pair up: fall back to row numbers
    return RawSplit(str(path), ds, file=str(path), lines=lines)


def _find_split_file(folder: Path, split: str) -> Path | None:
    for name in SPLIT_NAMES[split]:
        for suffix in FILE_TYPES:
            candidate = folder / f"{name}{suffix}"
            if candidate.is_file():
                return candidate
    return None


#: A column added for a moment to learn which original rows a held-out split took.
_ROW = "__scu_tui_row__"


def _hold_out(train: RawSplit, seed: int) -> tuple[RawSplit, RawSplit, int]:
    """Train and validation parts of a split (``HELD_OUT_FRACTION`` of the rows, at least 1)."""
    ds = train.rows
    if len(ds) < 2:
        raise UserError(f"data {train.label}: too few rows to hold out a validation split")
    held = max(1, int(len(ds) * HELD_OUT_FRACTION))
    parts = ds.add_column(_ROW, list(range(len(ds)))).train_test_split(
        test_size=held, seed=seed, shuffle=True
    )
    kept, valid = parts["train"], parts["test"]
    return (
        RawSplit(train.label, kept.remove_columns(_ROW), train.file, train.lines, list(kept[_ROW])),
        RawSplit(
            f"{train.label} (held-out {held} rows)",
            valid.remove_columns(_ROW),
            train.file,
            train.lines,
            list(valid[_ROW]),
        ),
        held,
    )


def _read_raw(path: str, seed: int) -> tuple[dict[str, RawSplit], list[str]]:
    """``{split: RawSplit}`` plus notes for the user."""
    notes: list[str] = []
    local = Path(path).expanduser()
    raw: dict[str, RawSplit] = {}
    if local.is_dir():
        for split in SPLIT_NAMES:
            file = _find_split_file(local, split)
            if file is not None:
                raw[split] = _read_file(file)
        if "train" not in raw:
            raise UserError(
                f"data {path}: no train split (expected train.jsonl, train.parquet or train.csv)"
            )
    elif local.is_file():
        raw["train"] = _read_file(local)
    elif local.suffix.lower() in FILE_TYPES or path.startswith((".", "/", "~")):
        raise UserError(f"data {path}: no such file or directory")
    else:
        raw = _read_hub(path)
    if "valid" not in raw:
        raw["train"], raw["valid"], held = _hold_out(raw["train"], seed)
        notes.append(f"no validation split: held out {held} training rows for validation")
    return raw, notes


def _read_hub(data_id: str) -> dict[str, RawSplit]:
    datasets = _quiet_datasets()

    try:
        loaded = datasets.load_dataset(data_id)
    except Exception as exc:
        raise UserError(
            f"data {data_id}: could not load it from the Hugging Face hub ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'no details'}). If this machine is "
            "offline, download it elsewhere and pass --data with a local folder of "
            "train/valid(/test).jsonl."
        ) from None
    raw: dict[str, RawSplit] = {}
    for split, names in SPLIT_NAMES.items():
        for name in names:
            if name in loaded:
                raw[split] = RawSplit(f"{data_id}[{name}]", loaded[name])
                break
    if "train" not in raw:
        raise UserError(f"data {data_id}: no 'train' split (found: {', '.join(loaded)})")
    return raw


# --- formats and tokenization --------------------------------------------------------------


def formats_help() -> str:
    """Every format with the keys its rows need, for messages."""
    return "; ".join(f"{fmt}: {list(keys)}" for fmt, keys in FORMAT_KEYS.items())


def _fitting(columns: list[str]) -> str | None:
    """The format auto-detection picks for these keys (chat, then completions, then text)."""
    for fmt in ("chat", "completions", "text"):
        if all(k in columns for k in FORMAT_KEYS[fmt]):
            return fmt
    return None


def detect_format(columns: list[str], forced: str, label: str) -> str:
    fits = _fitting(columns)
    if forced != "auto":
        missing = [k for k in FORMAT_KEYS[forced] if k not in columns]
        if missing:
            hint = (
                f"they fit format '{fits}' (data.format = \"auto\" detects it)"
                if fits
                else f"the formats and the keys each expects: {formats_help()}"
            )
            raise UserError(
                f"data {label}: format '{forced}' expects keys {list(FORMAT_KEYS[forced])}, "
                f"found {sorted(columns)}; {hint}"
            )
        return forced
    if fits is None:
        raise UserError(
            f"data {label}: cannot tell the format from keys {sorted(columns)}; "
            f"the formats and the keys each expects: {formats_help()}"
        )
    return fits


def tokenize_rows(
    rows: Any,
    tokenizer: Any,
    fmt: str,
    mask_prompt: bool,
    label: str,
    where: Callable[[int], str] | None = None,
) -> list[tuple[list[int], int]]:
    """Token ids and prompt offsets, through mlx-lm's dataset classes (its chat handling).

    ``where(index)`` names a row in messages (default: ``label row N``).
    """
    from mlx_lm.tuner.datasets import ChatDataset, CompletionsDataset, TextDataset

    def at(index: int) -> str:
        return where(index) if where is not None else f"{label} row {index + 1}"

    if fmt == "text" and mask_prompt:
        raise UserError("data.mask_prompt = true needs chat or completions data, not text")
    if fmt == "chat":
        ds: Any = ChatDataset(rows, tokenizer, chat_key="messages", mask_prompt=mask_prompt)
    elif fmt == "completions":
        ds = CompletionsDataset(rows, tokenizer, "prompt", "completion", mask_prompt)
    else:
        ds = TextDataset(rows, tokenizer, text_key="text")
    out: list[tuple[list[int], int]] = []
    for index in range(len(ds)):
        row = ds[index]
        for key in FORMAT_KEYS[fmt]:
            if row.get(key) in (None, "", []):
                raise UserError(f"{at(index)}: '{key}' is missing or empty")
        try:
            tokens, offset = ds.process(row)
        except Exception as exc:
            raise UserError(
                f"{at(index)}: cannot be tokenized as {fmt} data: {_first_line(exc)}"
            ) from None
        out.append((list(tokens), int(offset)))
    return out


def raw_split(settings: DataSettings, names: Sequence[str], seed: int) -> tuple[str, RawSplit, str]:
    """The first of ``names`` the data has, as read (before tokenization), and its format."""
    raw, _ = _read_raw(resolve_data_path(settings.path), seed)
    train = raw["train"]
    fmt = detect_format(list(train.rows.column_names), settings.format, train.label)
    for name in names:
        if name in raw and len(raw[name].rows):
            return name, raw[name], fmt
    raise UserError(f"data {settings.path}: no {' or '.join(names)} split")


def load_data(settings: DataSettings, tokenizer: Any, seed: int) -> DataBundle:
    """Read, check and tokenize every split."""
    raw, notes = _read_raw(resolve_data_path(settings.path), seed)
    train = raw["train"]
    fmt = detect_format(list(train.rows.column_names), settings.format, train.label)
    splits: dict[str, Split] = {}
    for name, part in raw.items():
        if len(part.rows) == 0:
            raise UserError(f"data {part.label}: the {name} split has no rows")
        detect_format(list(part.rows.column_names), fmt, part.label)
        sequences = tokenize_rows(
            part.rows, tokenizer, fmt, settings.mask_prompt, part.label, part.where
        )
        truncated = sum(len(t) > settings.max_seq_length for t, _ in sequences)
        splits[name] = Split(name, part.label, sequences, truncated)
        if truncated:
            notes.append(
                f"{truncated} of {len(sequences)} {name} sequences are longer than "
                f"max_seq_length={settings.max_seq_length} and will be truncated"
            )
    return DataBundle(splits["train"], splits["valid"], splits.get("test"), fmt, notes)


# --- batches -------------------------------------------------------------------------------


def make_batch(
    sequences: list[tuple[list[int], int]], max_seq_length: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pad to one plus a multiple of 32 (as mlx-lm does), truncating to max_seq_length."""
    lengths = [min(len(t), max_seq_length) for t, _ in sequences]
    width = min(1 + PAD_TO * ((max(lengths) + PAD_TO - 1) // PAD_TO), max_seq_length)
    batch = np.zeros((len(sequences), width), np.int32)
    for row, ((tokens, _), length) in enumerate(zip(sequences, lengths, strict=True)):
        batch[row, :length] = tokens[:length]
    offsets_lengths = np.array([[off, n] for (_, off), n in zip(sequences, lengths, strict=True)])
    return batch, offsets_lengths.astype(np.int32)


def length_sorted_batches(split: Split, batch_size: int) -> list[list[int]]:
    if len(split) < batch_size:
        raise UserError(
            f"data {split.source}: the {split.name} split has {len(split)} rows, fewer than "
            f"training.batch_size = {batch_size}"
        )
    order = sorted(range(len(split)), key=lambda i: len(split.sequences[i][0]))
    return [order[i : i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)]


class BatchStream:
    """Endless shuffled batches of similar length; resumable from ``(epoch, position)``."""

    def __init__(self, split: Split, batch_size: int, max_seq_length: int, seed: int) -> None:
        self.split = split
        self.max_seq_length = max_seq_length
        self.seed = seed
        self.batches = length_sorted_batches(split, batch_size)
        self.epoch = 0
        self.position = 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.batches))

    def next(self) -> tuple[np.ndarray, np.ndarray]:
        if self.position >= len(self._order):
            self.epoch += 1
            self.position = 0
            self._order = self._permutation(self.epoch)
        indices = self.batches[int(self._order[self.position])]
        self.position += 1
        return make_batch([self.split.sequences[i] for i in indices], self.max_seq_length)

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state(self, state: dict[str, int]) -> None:
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self._order = self._permutation(self.epoch)


def eval_batch_rows(split: Split, batch_size: int, limit: int) -> list[list[int]]:
    """The rows of each validation batch: those ``mlx_lm.lora`` evaluates, so that
    ``val_loss`` is the number it reports on the same data and settings.

    mlx-lm groups the rows in file order (its length sort sees every row of its cached
    data set as equally long: ml-explore/mlx-lm#596) into batches of ``batch_size``, leaves
    out the rows that do not fill a last batch, and evaluates ``limit`` of the batches (all
    when -1). It draws those at random on each pass; here they are the same on every pass,
    so validation losses are comparable across a run, and spread evenly over the batches
    ordered by their token count, so that short and long rows weigh in as they do in the
    whole split. A split smaller than a batch is one batch of all its rows (mlx-lm refuses
    it).
    """
    size = min(batch_size, len(split))
    batches = [list(range(i, i + size)) for i in range(0, len(split) - size + 1, size)]
    if limit != -1 and limit < len(batches):
        tokens = [sum(len(split.sequences[i][0]) for i in rows) for rows in batches]
        by_tokens = sorted(range(len(batches)), key=lambda b: tokens[b])
        picks = np.unique(np.linspace(0, len(batches) - 1, limit).round().astype(int))
        batches = [batches[b] for b in sorted(by_tokens[int(p)] for p in picks)]
    return batches


def eval_batches(
    split: Split, batch_size: int, max_seq_length: int, limit: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The validation batches of :func:`eval_batch_rows`, padded and truncated as mlx-lm's
    ``iterate_batches`` does."""
    for indices in eval_batch_rows(split, batch_size, limit):
        yield make_batch([split.sequences[i] for i in indices], max_seq_length)


def target_tokens(batch: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Per row, the tokens mlx-lm's loss counts (targets ``1..T-1`` inside each row's
    ``[offset, length]``): computed before any math, so each rank of a distributed run
    knows its share of a batch."""
    last = batch.shape[1] - 1
    lo = np.maximum(lengths[:, 0], 1)
    hi = np.minimum(lengths[:, 1], last)
    counts: np.ndarray = np.maximum(hi - lo + 1, 0).astype(np.int64)
    return counts


def rank_rows(rows: int, rank: int, world: int) -> slice:
    """A distributed run's rank's rows of a global batch: ``[r*B/N, (r+1)*B/N)``."""
    return slice(rank * rows // world, (rank + 1) * rows // world)
