"""The embedded demo model and data load through mlx-lm, transformers and datasets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scu_tui.demo import DATA_DIR, DEMO_DIR, MODEL_DIR

SPLITS = ("train", "valid", "test")
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def loaded() -> tuple:
    from mlx_lm import load

    return load(str(MODEL_DIR))


def test_model_config_is_tiny_float32_qwen3() -> None:
    from safetensors import safe_open

    config = json.loads((MODEL_DIR / "config.json").read_text(encoding="utf-8"))
    assert config["model_type"] == "qwen3"
    assert config["tie_word_embeddings"] is True
    with safe_open(str(MODEL_DIR / "model.safetensors"), framework="numpy") as fh:
        names = list(fh.keys())
        assert "model.embed_tokens.weight" in names
        assert all(str(fh.get_tensor(name).dtype) == "float32" for name in names)
        vocab, hidden = fh.get_tensor("model.embed_tokens.weight").shape
    assert (vocab, hidden) == (config["vocab_size"], config["hidden_size"])


def test_mlx_lm_loads_and_generates(loaded: tuple) -> None:
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm import generate, stream_generate

    model, tokenizer = loaded
    assert model.model_type == "qwen3"
    assert all(v.dtype == mx.float32 for _, v in tree_flatten(model.parameters()))
    text = generate(model, tokenizer, prompt="The capital of France is", max_tokens=4)
    assert isinstance(text, str)
    tokens = [r.token for r in stream_generate(model, tokenizer, "The opposite of", max_tokens=3)]
    assert len(tokens) >= 1


def test_eos_is_im_end(loaded: tuple) -> None:
    _, tokenizer = loaded
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in tokenizer.eos_token_ids


def test_chat_template_renders_chatml(loaded: tuple) -> None:
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(MODEL_DIR))
    text = hf.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    expected = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    assert text == expected
    _, tokenizer = loaded  # mlx-lm's wrapper tokenizes by default
    ids = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True)
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert tokenizer.decode(ids) == expected
    # Special tokens are single ids, and text round-trips through the byte-level BPE.
    assert len(hf.encode("<|im_end|>", add_special_tokens=False)) == 1
    sample = "Any text, even ünïcode & 1234!"
    assert hf.decode(hf.encode(sample, add_special_tokens=False)) == sample


def _rows(split: str) -> list[str]:
    lines = (DATA_DIR / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
    return [line for line in lines if line.strip()]


@pytest.mark.parametrize("split", SPLITS)
def test_split_loads_with_datasets(split: str, tmp_path: Path) -> None:
    from datasets import load_dataset

    path = str(DATA_DIR / f"{split}.jsonl")
    ds = load_dataset("json", data_files=path, split="train", cache_dir=str(tmp_path))
    assert "messages" in ds.column_names
    assert len(ds) > 0
    assert ds[0]["messages"][-1]["role"] == "assistant"


def test_splits_load_through_mlx_lm(loaded: tuple) -> None:
    from types import SimpleNamespace

    from mlx_lm.tuner.datasets import ChatDataset, load_local_dataset

    _, tokenizer = loaded
    train, valid, test = load_local_dataset(Path(DATA_DIR), tokenizer, SimpleNamespace())
    assert all(isinstance(ds, ChatDataset) and len(ds) > 0 for ds in (train, valid, test))
    tokens, offset = train.process(train[0])
    assert offset == 0 and tokenizer.convert_tokens_to_ids("<|im_end|>") in tokens
    masked = ChatDataset(train._data, tokenizer, mask_prompt=True)
    tokens_m, offset_m = masked.process(train[0])
    assert tokens_m == tokens and 0 < offset_m < len(tokens)


def test_no_overlap_between_splits() -> None:
    rows = {split: set(_rows(split)) for split in SPLITS}
    assert not rows["train"] & rows["valid"]
    assert not rows["train"] & rows["test"]
    assert not rows["valid"] & rows["test"]
    # Splits are by fact: an answer (which states its fact) never appears in two splits.
    answers = {
        split: {json.loads(row)["messages"][-1]["content"] for row in rows[split]}
        for split in SPLITS
    }
    assert not answers["train"] & answers["valid"]
    assert not answers["train"] & answers["test"]


def test_demo_folder_is_small() -> None:
    files = [p for d in (MODEL_DIR, DATA_DIR) for p in d.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 5 * 1024 * 1024
    assert DEMO_DIR.is_dir()
