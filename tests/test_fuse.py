"""``scu-tui fuse``: a run's adapters fused into its base, as a model folder mlx-lm loads.

On a float base the fused model generates exactly what the base with its adapters
generates; on a 4-bit base the re-quantized fuse loses part of the adapters' effect and
is refused, unless a float model is asked for.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import scu
from rich.text import Text

from scu_tui.compare import _prompt_text, _split_loss, load_test_set, prompt_and_reference
from scu_tui.fuse import MARKER, TOLERANCE
from scu_tui.generate import generate_with_run
from scu_tui.runfolder import load_run_settings

TRAIN = ("--headless", "--preset", "demo", "--set", "scu.enabled=false",
         "--set", "training.eval_every=20", "--set", "training.compare_at_end=false")  # fmt: skip


def train(out: Path, *extra: str) -> Path:
    result = scu(*TRAIN, "--output-dir", str(out), *extra)
    assert result.returncode == 0, result.stderr
    return out


def test_the_comparison_screen_names_the_fuse_command() -> None:
    from scu_tui.app.feed import RunState
    from scu_tui.app.screens import comparison_text
    from scu_tui.protocol import ComparisonEvent

    state = RunState(output_dir="runs/demo-1")
    state.comparison = ComparisonEvent(
        9, split="test", rows=3, adapters="runs/demo-1/best", base_loss=2.0,
        tuned_loss=1.0, fixed=1, broke=0, examples=[],
    )  # fmt: skip
    assert "scu-tui fuse runs/demo-1" in Text.from_markup(comparison_text(state)).plain


@pytest.fixture(scope="module")
def float_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train(tmp_path_factory.mktemp("fuse") / "run", "--max-steps", "80")


@pytest.fixture(scope="module")
def quantized_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A brief run on a 4-bit copy of the demo model (mlx-lm's own quantization)."""
    from mlx_lm.convert import convert

    from scu_tui.demo import MODEL_DIR

    folder = tmp_path_factory.mktemp("fuse4")
    convert(str(MODEL_DIR), str(folder / "q4"), quantize=True, q_bits=4, q_group_size=64)
    return train(folder / "run", "--model", str(folder / "q4"), "--max-steps", "40")


def leftovers(folder: Path) -> list[str]:
    """Temporary folders a fuse left beside its target."""
    return [p.name for p in folder.iterdir() if ".tmp-" in p.name]


@pytest.mark.slow
def test_the_fused_float_model_generates_what_base_and_adapters_generate(
    float_run: Path,
) -> None:
    from mlx_lm import generate, load

    result = scu("fuse", str(float_run))
    assert result.returncode == 0, result.stderr
    fused = float_run / "fused"
    assert f"wrote {fused}" in result.stdout
    for name in ("config.json", "tokenizer.json", "model.safetensors", MARKER):
        assert (fused / name).is_file(), name
    config = json.loads((fused / "config.json").read_text())
    assert config["model_type"] == "qwen3" and "quantization" not in config
    assert not (fused / "adapters.safetensors").exists()

    settings = load_run_settings(float_run)
    model, tokenizer = load(str(fused))[:2]
    tests = load_test_set(settings, tokenizer)
    prompts = [prompt_and_reference(row, tests.format) for row in tests.rows[:6]]
    changed = 0
    for pair in prompts:
        assert pair is not None
        question = pair[0][-1]["content"]
        text = _prompt_text(tokenizer, pair[0])
        got = str(generate(model, tokenizer, prompt=text, max_tokens=24)).strip()
        _, want = generate_with_run(float_run, settings, question, max_tokens=24)
        _, base = generate_with_run(float_run, settings, question, max_tokens=24, base=True)
        assert got == want, question  # greedy: the same tokens
        changed += got != base
    assert changed > 0  # the adapters are in the fused weights


@pytest.mark.slow
def test_a_second_fuse_replaces_the_first_and_other_folders_are_left_alone(
    float_run: Path, tmp_path: Path
) -> None:
    to = tmp_path / "model"
    assert scu("fuse", str(float_run), "--to", str(to)).returncode == 0
    first = (to / "model.safetensors").stat().st_mtime_ns
    again = scu("fuse", str(float_run), "--to", str(to))
    assert again.returncode == 0, again.stderr
    assert (to / "model.safetensors").stat().st_mtime_ns >= first
    assert leftovers(tmp_path) == []

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    refused = scu("fuse", str(float_run), "--to", str(mine))
    assert refused.returncode == 2
    assert "did not write" in refused.stderr and "Traceback" not in refused.stderr
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    unwritable = scu("fuse", str(float_run), "--to", str(blocker / "model"))
    assert unwritable.returncode == 2 and "cannot write" in unwritable.stderr
    assert "Traceback" not in unwritable.stderr


@pytest.mark.slow
def test_gguf_is_refused_for_an_architecture_mlx_lm_cannot_export(
    float_run: Path, tmp_path: Path
) -> None:
    to = tmp_path / "gguf"
    result = scu("fuse", str(float_run), "--gguf", "--to", str(to))
    assert result.returncode == 2
    assert "llama, mistral, mixtral" in result.stderr and "'qwen3'" in result.stderr
    assert not to.exists() and leftovers(tmp_path) == []


@pytest.mark.slow
def test_a_folder_that_is_not_a_run_or_has_no_adapters_is_refused(
    float_run: Path, tmp_path: Path
) -> None:
    result = scu("fuse", str(tmp_path / "nowhere"))
    assert result.returncode == 2 and "no such directory" in result.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    result = scu("fuse", str(empty))
    assert result.returncode == 2 and "not a scu-tui run" in result.stderr
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    shutil.copy(float_run / "simple_training_config.json", fresh)
    result = scu("fuse", str(fresh))
    assert result.returncode == 2 and "no adapters yet" in result.stderr
    assert not (fresh / "fused").exists() and leftovers(fresh) == []


@pytest.mark.slow
def test_a_4bit_fuse_that_loses_the_adapters_is_refused_and_dequantize_keeps_them(
    quantized_run: Path,
) -> None:
    from mlx_lm import load

    refused = scu("fuse", str(quantized_run))
    assert refused.returncode == 2, refused.stdout
    assert "--dequantize" in refused.stderr and f"more than {TOLERANCE:.0%}" in refused.stderr
    assert not (quantized_run / "fused").exists() and leftovers(quantized_run) == []

    result = scu("fuse", str(quantized_run), "--dequantize")
    assert result.returncode == 0, result.stderr
    fused = quantized_run / "fused"
    assert "float weights: the quantized base was dequantized" in result.stdout
    assert f"mlx_lm.generate --model {fused}" in result.stdout
    config = json.loads((fused / "config.json").read_text())
    assert "quantization" not in config and "quantization_config" not in config

    settings = load_run_settings(quantized_run)
    model, tokenizer = load(str(fused))[:2]
    tests = load_test_set(settings, tokenizer)
    with_adapters, _ = load(settings.model.path, adapter_path=str(quantized_run / "best"))[:2]
    want = _split_loss(with_adapters, tests.split, settings)
    assert _split_loss(model, tests.split, settings) == pytest.approx(want, rel=1e-4)


def tiny_llama(folder: Path) -> Path:
    """A two-block Llama with random weights and the demo's tokenizer: an architecture
    mlx-lm exports to GGUF."""
    import mlx.core as mx
    from mlx_lm.models import llama
    from mlx_lm.utils import save_config, save_model

    from scu_tui.demo import MODEL_DIR

    config = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2,
              "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
              "rms_norm_eps": 1e-6, "vocab_size": 512, "max_position_embeddings": 512,
              "tie_word_embeddings": True, "torch_dtype": "float32"}  # fmt: skip
    mx.random.seed(0)
    model = llama.Model(llama.ModelArgs.from_dict(config))
    save_model(folder, model)
    save_config(dict(config), config_path=folder / "config.json")
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(MODEL_DIR / name, folder / name)
    return folder


@pytest.mark.slow
def test_gguf_of_a_llama_holds_the_fused_weights(tmp_path: Path) -> None:
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm import load

    base = tiny_llama(tmp_path / "llama")
    run = train(tmp_path / "run", "--model", str(base), "--max-steps", "4",
                "--set", "training.eval_every=2", "--set", "training.samples=0")  # fmt: skip
    result = scu("fuse", str(run), "--gguf")
    assert result.returncode == 0, result.stderr
    gguf = run / "fused" / "ggml-model-f16.gguf"
    assert f"wrote {gguf}" in result.stdout and ".tmp-" not in result.stdout
    tensors, metadata = mx.load(str(gguf), return_metadata=True)
    assert str(metadata["general.architecture"]) == "llama"
    fused = dict(tree_flatten(load(str(run / "fused"))[0].parameters()))
    original = dict(tree_flatten(load(str(base))[0].parameters()))
    name = "model.layers.1.self_attn.v_proj.weight"  # adapted: the fuse changed it
    assert not mx.allclose(fused[name], original[name]).item()
    assert mx.allclose(tensors["blk.1.attn_v.weight"], fused[name]).item()
