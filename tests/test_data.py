"""Data loading: three formats, folders and single files, and clear errors for bad data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from scu_tui.config import DataSettings
from scu_tui.errors import UserError
from scu_tui.training.data import BatchStream, load_data

ROWS = [(f"What is {a} plus {b}?", str(a + b)) for a in range(10) for b in range(6)]


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from mlx_lm import load

    from scu_tui.demo import MODEL_DIR

    return load(str(MODEL_DIR))[1]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def as_format(fmt: str) -> list[dict[str, Any]]:
    if fmt == "chat":
        return [
            {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for q, a in ROWS
        ]
    if fmt == "completions":
        return [{"prompt": q, "completion": a} for q, a in ROWS]
    return [{"text": f"{q} {a}"} for q, a in ROWS]


def folder(tmp_path: Path, fmt: str) -> Path:
    rows = as_format(fmt)
    write_jsonl(tmp_path / "train.jsonl", rows[:50])
    write_jsonl(tmp_path / "valid.jsonl", rows[50:])
    return tmp_path


@pytest.mark.parametrize("fmt", ["chat", "completions", "text"])
def test_each_format_is_detected_and_tokenized(tmp_path: Path, tokenizer: Any, fmt: str) -> None:
    bundle = load_data(DataSettings(path=str(folder(tmp_path, fmt))), tokenizer, seed=0)
    assert bundle.format == fmt
    assert len(bundle.train) == 50 and len(bundle.valid) == 10
    tokens, offset = bundle.train.sequences[0]
    assert len(tokens) > 3 and offset == 0


def test_mask_prompt_sets_an_offset_past_the_prompt(tmp_path: Path, tokenizer: Any) -> None:
    path = str(folder(tmp_path, "completions"))
    bundle = load_data(DataSettings(path=path, mask_prompt=True), tokenizer, seed=0)
    tokens, offset = bundle.train.sequences[0]
    assert 0 < offset < len(tokens)


def test_single_file_gets_a_held_out_validation_split(tmp_path: Path, tokenizer: Any) -> None:
    path = tmp_path / "all.jsonl"
    write_jsonl(path, as_format("chat"))
    bundle = load_data(DataSettings(path=str(path)), tokenizer, seed=0)
    assert len(bundle.train) + len(bundle.valid) == len(ROWS) and len(bundle.valid) == 6
    assert any("held out" in note for note in bundle.notes)


def test_parquet_and_csv_files_load(tmp_path: Path, tokenizer: Any) -> None:
    import datasets

    ds = datasets.Dataset.from_list(as_format("completions"))
    ds.to_parquet(str(tmp_path / "d.parquet"))
    ds.to_csv(str(tmp_path / "d.csv"), index=False)
    for name in ("d.parquet", "d.csv"):
        bundle = load_data(DataSettings(path=str(tmp_path / name)), tokenizer, seed=0)
        assert bundle.format == "completions" and len(bundle.train) > 0


def test_truncation_is_counted(tmp_path: Path, tokenizer: Any) -> None:
    bundle = load_data(
        DataSettings(path=str(folder(tmp_path, "text")), max_seq_length=8), tokenizer, seed=0
    )
    assert bundle.train.truncated > 0
    assert any("truncated" in note for note in bundle.notes)


def test_malformed_line_names_file_and_line(tmp_path: Path, tokenizer: Any) -> None:
    folder(tmp_path, "chat")
    train = tmp_path / "train.jsonl"
    lines = train.read_text().splitlines()
    lines[6] = lines[6][:-3]
    train.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=rf"{train}:7: not valid JSON"):
        load_data(DataSettings(path=str(tmp_path)), tokenizer, seed=0)


def test_wrong_keys_say_what_was_expected_and_found(tmp_path: Path, tokenizer: Any) -> None:
    write_jsonl(tmp_path / "train.jsonl", [{"question": "a", "answer": "b"}] * 8)
    with pytest.raises(UserError) as err:
        load_data(DataSettings(path=str(tmp_path)), tokenizer, seed=0)
    assert "'messages'" in str(err.value) and "['answer', 'question']" in str(err.value)
    with pytest.raises(UserError, match=r"format 'text' expects keys \['text'\]"):
        load_data(DataSettings(path=str(tmp_path), format="text"), tokenizer, seed=0)


def test_empty_split_and_missing_train_are_errors(tmp_path: Path, tokenizer: Any) -> None:
    with pytest.raises(UserError, match="no train split"):
        load_data(DataSettings(path=str(tmp_path)), tokenizer, seed=0)
    write_jsonl(tmp_path / "train.jsonl", as_format("text"))
    (tmp_path / "valid.jsonl").write_text("")
    with pytest.raises(UserError, match=r"no rows|cannot be read"):
        load_data(DataSettings(path=str(tmp_path)), tokenizer, seed=0)


def test_batch_stream_resumes_exactly(tmp_path: Path, tokenizer: Any) -> None:
    bundle = load_data(DataSettings(path=str(folder(tmp_path, "text"))), tokenizer, seed=0)
    a = BatchStream(bundle.train, 4, 64, seed=3)
    for _ in range(15):  # past one epoch of 12 batches
        a.next()
    b = BatchStream(bundle.train, 4, 64, seed=3)
    b.load_state(a.state())
    for _ in range(10):
        xa, la = a.next()
        xb, lb = b.next()
        assert (xa == xb).all() and (la == lb).all()


def test_a_bad_row_is_named_by_its_line_when_validation_is_held_out(
    tmp_path: Path, tokenizer: Any
) -> None:
    rows: list[dict[str, Any]] = as_format("text")
    for bad in (0, 17, 59):
        rows_now = [dict(r) for r in rows]
        rows_now[bad] = {"text": ""}
        path = tmp_path / "all.jsonl"
        write_jsonl(path, rows_now)
        with pytest.raises(UserError) as err:  # held out (row 0 with seed 3) or shuffled
            load_data(DataSettings(path=str(path)), tokenizer, seed=3)
        assert str(err.value) == f"{path}:{bad + 1}: 'text' is missing or empty"


def test_blank_lines_do_not_shift_line_numbers(tmp_path: Path, tokenizer: Any) -> None:
    folder(tmp_path, "completions")
    train = tmp_path / "train.jsonl"
    lines = train.read_text().splitlines()
    lines[4] = json.dumps({"prompt": "What?", "completion": ""})
    train.write_text("\n\n".join(lines) + "\n")  # a blank line after every row
    with pytest.raises(UserError) as err:
        load_data(DataSettings(path=str(tmp_path)), tokenizer, seed=0)
    assert str(err.value) == f"{train}:9: 'completion' is missing or empty"


def test_non_utf8_line_is_named(tmp_path: Path, tokenizer: Any) -> None:
    folder(tmp_path, "text")
    train = tmp_path / "train.jsonl"
    train.write_bytes(train.read_bytes().replace(b"plus", b"pl\xffus", 1))
    with pytest.raises(UserError, match=rf"{train}:1: not UTF-8 text"):
        load_data(DataSettings(path=str(tmp_path)), tokenizer, seed=0)


def test_a_forced_format_that_does_not_fit_names_the_one_that_does(
    tmp_path: Path, tokenizer: Any
) -> None:
    with pytest.raises(UserError) as err:
        load_data(DataSettings(path=str(folder(tmp_path, "text")), format="chat"), tokenizer, 0)
    assert str(err.value).endswith(
        "format 'chat' expects keys ['messages'], found ['text']; "
        "they fit format 'text' (data.format = \"auto\" detects it)"
    )


def test_when_no_format_fits_every_format_and_its_keys_are_listed(
    tmp_path: Path, tokenizer: Any
) -> None:
    write_jsonl(tmp_path / "train.jsonl", [{"question": "a", "answer": "b"}] * 8)
    with pytest.raises(UserError) as err:
        load_data(DataSettings(path=str(tmp_path)), tokenizer, seed=0)
    assert "cannot tell the format from keys ['answer', 'question']" in str(err.value)
    assert str(err.value).endswith(
        "chat: ['messages']; completions: ['prompt', 'completion']; text: ['text']"
    )


def test_a_json_array_file_loads(tmp_path: Path, tokenizer: Any) -> None:
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(as_format("completions"), indent=2), encoding="utf-8")
    bundle = load_data(DataSettings(path=str(path)), tokenizer, seed=0)
    assert bundle.format == "completions" and len(bundle.train) + len(bundle.valid) == len(ROWS)


def test_a_file_the_reader_refuses_gives_the_readers_own_words(
    tmp_path: Path, tokenizer: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "train.csv").write_text("text\nA\nB,C,D\n", encoding="utf-8")
    with pytest.raises(UserError) as err:
        load_data(DataSettings(path=str(tmp_path)), tokenizer, seed=0)
    assert str(err.value) == (
        f"data {tmp_path / 'train.csv'}: cannot be read as csv: "
        "Error tokenizing data. C error: Expected 1 fields in line 3, saw 3"
    )
    assert "Failed to read" not in capfd.readouterr().err  # said once, in that line


def test_an_empty_jsonl_file_has_no_rows(tmp_path: Path, tokenizer: Any) -> None:
    (tmp_path / "train.jsonl").write_text("\n\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"train\.jsonl: no rows \(an empty file\)"):
        load_data(DataSettings(path=str(tmp_path)), tokenizer, seed=0)
