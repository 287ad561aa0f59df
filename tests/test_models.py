"""Any local model mlx-lm can load trains: another architecture, and a quantized base (QLoRA)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import mlx.core as mx
import pytest
from helpers import read_events, scu
from mlx.utils import tree_flatten

from scu_tui.demo import MODEL_DIR
from scu_tui.errors import UserError
from scu_tui.training.model import load_model

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def tiny_llama(folder: Path) -> Path:
    """A randomly initialised Llama-architecture model with the demo's tokenizer."""
    from mlx_lm.models import llama

    vocab = json.loads((MODEL_DIR / "config.json").read_text())["vocab_size"]
    config = {
        "model_type": "llama",
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5,
        "vocab_size": vocab,
        "tie_word_embeddings": True,
    }
    mx.random.seed(0)
    model = llama.Model(llama.ModelArgs.from_dict(config))
    folder.mkdir(parents=True)
    mx.save_safetensors(str(folder / "model.safetensors"), dict(tree_flatten(model.parameters())))
    (folder / "config.json").write_text(json.dumps(config))
    for name in TOKENIZER_FILES:
        if (MODEL_DIR / name).exists():
            shutil.copy(MODEL_DIR / name, folder / name)
    return folder


@pytest.mark.slow
def test_another_architecture_trains_headless(tmp_path: Path) -> None:
    model = tiny_llama(tmp_path / "llama")
    out = tmp_path / "run"
    result = scu(
        "--headless",
        "--preset",
        "demo",
        "--model",
        str(model),
        "--max-steps",
        "5",
        "--output-dir",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    steps = [e for e in read_events(out) if e["type"] == "step"]
    assert len(steps) == 5 and steps[-1]["loss"] < steps[0]["loss"] * 1.5


@pytest.mark.slow
def test_quantized_base_trains_with_qlora(tmp_path: Path) -> None:
    from mlx_lm import convert

    quantized = tmp_path / "q4"
    convert(str(MODEL_DIR), str(quantized), quantize=True, q_group_size=32, q_bits=4)
    out = tmp_path / "run"
    result = scu(
        "--headless",
        "--preset",
        "demo",
        "--model",
        str(quantized),
        "--max-steps",
        "5",
        "--output-dir",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    start = next(e for e in read_events(out) if e["type"] == "start")
    assert start["trainable_parameters"] > 0
    assert (out / "adapters.safetensors").is_file()


@pytest.mark.parametrize(
    ("path", "fragment"),
    [
        ("./no/such/model", "no such directory"),
        ("not a hub id", "no such directory"),
    ],
)
def test_missing_model_is_a_clear_error(path: str, fragment: str) -> None:
    with pytest.raises(UserError, match=fragment):
        load_model(path)


@pytest.mark.slow
def test_folder_without_config_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"no config\.json"):
        load_model(str(tmp_path))
    result = scu("--headless", "--model", str(tmp_path), "--output-dir", str(tmp_path / "r"))
    assert result.returncode == 2 and "Traceback" not in result.stderr


@pytest.mark.slow
def test_unreachable_hub_says_so_and_how_to_use_a_local_copy(tmp_path: Path) -> None:
    result = scu(
        "--headless",
        "--model",
        "nobody-here/no-such-model",
        "--output-dir",
        str(tmp_path / "r"),
        env={"HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "Hugging Face hub" in result.stderr and "--model DIR" in result.stderr


def demo_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(MODEL_DIR, folder)
    return folder


def edit_config(folder: Path, **changes: object) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps({k: v for k, v in config.items() if v != ...}))


@pytest.mark.parametrize(
    ("damage", "fragment"),
    [
        (lambda f: (f / "config.json").write_text("[1, 2]"), "expected a JSON object, got list"),
        (lambda f: (f / "config.json").write_text('{\n"a": }'), "config.json:2:6: not valid JSON"),
        (lambda f: (f / "config.json").write_bytes(b'{"\xff": 1}'), "config.json: not UTF-8 text"),
        (
            lambda f: edit_config(f, model_type=...),
            "config.json: key 'model_type' must name the architecture",
        ),
        (lambda f: edit_config(f, model_type=3), 'the architecture (e.g. "qwen3"); got 3'),
        (
            lambda f: edit_config(f, hidden_size=..., num_hidden_layers=...),
            "config.json lacks 'hidden_size' and 'num_hidden_layers', which its architecture needs",
        ),
        (lambda f: edit_config(f, model_type="nonesuch"), "Model type nonesuch not supported"),
        (lambda f: edit_config(f, rope_scaling="abc"), "of the wrong type?"),
        (
            lambda f: (f / "model.safetensors").write_bytes(
                (MODEL_DIR / "model.safetensors").read_bytes()[:-100]
            ),
            "model.safetensors: truncated: its tensors need",
        ),
        (
            lambda f: (f / "model.safetensors").write_bytes(b"\x00\x01"),
            "model.safetensors: truncated or not a safetensors file (2 bytes)",
        ),
        (
            lambda f: (f / "model.safetensors").write_bytes(
                (weights := (MODEL_DIR / "model.safetensors").read_bytes())[:8]
                + b"{" * 100
                + weights[108:]
            ),
            "model.safetensors: corrupt safetensors header",
        ),
        (lambda f: (f / "model.safetensors").unlink(), "no model*.safetensors weights"),
    ],
)
def test_a_damaged_model_folder_is_one_clear_line(
    tmp_path: Path, damage: Callable[[Path], object], fragment: str
) -> None:
    folder = demo_copy(tmp_path)
    damage(folder)
    with pytest.raises(UserError) as err:
        load_model(str(folder))
    assert fragment in str(err.value) and "\n" not in str(err.value)


@pytest.mark.slow
def test_a_truncated_download_exits_2_before_training(tmp_path: Path) -> None:
    folder = demo_copy(tmp_path)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    out = tmp_path / "run"
    result = scu("--headless", "--model", str(folder), "--max-steps", "2", "--output-dir", str(out))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"scu-tui: error: {weights}: truncated")
    assert not (out / "events.jsonl").exists()
