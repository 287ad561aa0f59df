"""Settings: schema, validation messages, merge order, TOML round trip."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from scu_tui.config import (
    ConfigError,
    Settings,
    all_keys,
    apply_assignments,
    key_doc,
    load_file,
    merge,
    to_toml,
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "p.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_every_key_has_a_default_and_a_doc() -> None:
    keys = all_keys()
    assert "training.learning_rate" in keys and "scu.lr_bounds" in keys and "ui.refresh_hz" in keys
    for key in keys:
        assert key_doc(key).strip(), key


def test_spec_keys_are_all_present() -> None:
    spec = {
        "model.path",
        "lora.rank",
        "lora.alpha",
        "lora.dropout",
        "lora.num_layers",
        "data.path",
        "data.format",
        "data.max_seq_length",
        "data.mask_prompt",
        "training.batch_size",
        "training.gradient_accumulation_steps",
        "training.learning_rate",
        "training.optimizer",
        "training.schedule",
        "training.weight_decay",
        "training.max_steps",
        "training.warmup_steps",
        "training.eval_every",
        "training.eval_batches",
        "training.save_every",
        "training.seed",
        "scu.enabled",
        "scu.mode",
        "scu.control_frequency",
        "scu.target_loss_improvement",
        "scu.window",
        "scu.wavelet",
        "scu.levels",
        "scu.lr_bounds",
        "scu.weight_decay_bounds",
        "scu.dropout_bounds",
        "scu.accumulation_bounds",
        "scu.cooldown",
        "scu.proposal_ttl",
        "ui.theme",
        "ui.refresh_hz",
        "name",
        "description",
    }
    assert spec <= set(all_keys())


def test_syntax_error_names_file_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, 'name = "x"\n[training]\nlearning_rate = = 3\n')
    with pytest.raises(ConfigError) as err:
        load_file(path)
    assert str(err.value).startswith(f"{path}:3:")
    assert "invalid TOML" in str(err.value)


def test_unknown_key_names_key_line_and_closest_valid_name(tmp_path: Path) -> None:
    path = write(tmp_path, "[training]\nbatch_size = 2\nlearnig_rate = 1e-4\n")
    with pytest.raises(ConfigError) as err:
        load_file(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}:3:")
    assert "'training.learnig_rate'" in msg and "did you mean 'training.learning_rate'" in msg


def test_unknown_section_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown key 'trainer'"):
        load_file(write(tmp_path, "[trainer]\nseed = 1\n"))


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[training]\nlearning_rate = -0.1\n", "training.learning_rate = -0.1: must be > 0"),
        ("[training]\nbatch_size = 0\n", "training.batch_size = 0: must be between 1 and 65536"),
        (
            "[scu]\nlr_bounds = [1e-3, 1e-6]\n",
            "scu.lr_bounds = [0.001, 1e-06]: must be [low, high]",
        ),
        ('[scu]\nmode = "fast"\n', "scu.mode = \"fast\": must be one of 'auto', 'ask', 'observe'"),
        ('[scu]\nwavelet = "haar"\n', "must be a Daubechies wavelet"),
        ('[training]\nbatch_size = "2"\n', "expected an integer, got a string"),
        ("[scu]\nenabled = 1\n", "expected true or false, got an integer"),
        ("[lora]\ndropout = 1.0\n", "lora.dropout = 1.0: must be between 0 and 1 (exclusive)"),
        ("[training]\nlearning_rate = nan\n", "learning_rate = nan: must be finite and > 0"),
        ("[scu]\nwindow = inf\n", "scu.window = inf: expected an integer, got a number"),
        ("[training]\nseed = 5000000000\n", "must be an integer from 0 to 4294967295"),
        ("[scu]\nweight_decay_bounds = [0.0, nan]\n", "must be finite and [low, high]"),
    ],
)
def test_bad_values_name_key_value_and_what_is_allowed(
    tmp_path: Path, text: str, fragment: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_file(path)
    assert f"{path}:2:" in str(err.value)
    assert fragment in str(err.value)


def test_ints_are_accepted_where_numbers_are_expected(tmp_path: Path) -> None:
    s = load_file(write(tmp_path, "[lora]\nalpha = 64\n"))
    assert s.lora.alpha == 64.0 and isinstance(s.lora.alpha, float)


def test_merge_order_defaults_preset_set(tmp_path: Path) -> None:
    s = load_file(write(tmp_path, "[training]\nlearning_rate = 2e-4\nmax_steps = 10\n"))
    assert s.training.learning_rate == 2e-4
    assert s.training.batch_size == Settings().training.batch_size  # default kept
    s = apply_assignments(s, ["training.learning_rate=1e-3", "scu.lr_bounds=[1e-6, 1e-2]"])
    assert s.training.learning_rate == 1e-3 and s.training.max_steps == 10
    assert s.scu.lr_bounds == [1e-6, 1e-2]
    s = s.replace({"training.learning_rate": 5e-4}, source="command line")
    assert s.training.learning_rate == 5e-4


def test_set_accepts_bare_paths_and_reports_bad_keys() -> None:
    s = apply_assignments(Settings(), ["model.path=models/tiny-qwen", "scu.enabled=false"])
    assert s.model.path == "models/tiny-qwen" and s.scu.enabled is False
    with pytest.raises(ConfigError, match=r"did you mean 'training.learning_rate'"):
        apply_assignments(Settings(), ["training.lr=1e-3"])
    with pytest.raises(ConfigError, match=r"expected section\.key=value"):
        apply_assignments(Settings(), ["training.seed"])


def test_resolved_toml_loads_back_to_the_same_settings(tmp_path: Path) -> None:
    s = apply_assignments(Settings(), ["training.seed=7", 'lora.keys=["self_attn.q_proj"]'])
    text = to_toml(s)
    assert merge(Settings(), tomllib.loads(text), source="x") == s
    path = write(tmp_path, text)
    assert load_file(path) == s


@pytest.mark.parametrize(
    ("assignment", "fragment"),
    [
        ("training.learning_rate=nan", "training.learning_rate = nan: must be finite and > 0"),
        ("training.grad_clip=inf", "training.grad_clip = inf: must be finite and >= 0"),
        ("ui.refresh_hz=-inf", "ui.refresh_hz = -inf: must be finite and between 0.5 and 60"),
        ("scu.lr_bounds=[1e-6, inf]", "scu.lr_bounds = [1e-06, inf]: must be finite and [low"),
        ("scu.lr_bounds=[1e-6]", "scu.lr_bounds = [1e-06]: must be [low, high]"),
        ("scu.dropout_bounds=[0.0, 0.1, 0.2]", "must be [low, high] with low <= high"),
        ("training.seed=-1", "training.seed = -1: must be an integer from 0 to 4294967295"),
        ("training.seed=4294967296", "must be an integer from 0 to 4294967295"),
        ("training.max_steps=10000000000", "must be between 1 and 1000000000"),
        ("lora.rank=1000000", "lora.rank = 1000000: must be between 1 and 65536"),
        ("scu.target_loss_improvement=2.0", "must be > 0 and <= 1"),
    ],
)
def test_numbers_must_be_finite_and_in_range(assignment: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        apply_assignments(Settings(), [assignment])
    assert fragment in str(err.value)


def test_the_largest_seed_every_random_generator_takes_is_accepted() -> None:
    import mlx.core as mx
    import numpy as np

    s = apply_assignments(Settings(), ["training.seed=4294967295"])
    seed, steps = s.training.seed, 10**9  # the trainer seeds dropout with seed * 1_000_003 + step
    mx.random.seed(seed)
    mx.random.seed(seed * 1_000_003 + steps)
    assert np.random.default_rng([seed, 3]).integers(10) >= 0


@pytest.mark.parametrize(
    "name", ["../escape", "a/b", "a\\b", ".hidden", "..", "", "   ", "tab\there", "x" * 201]
)
def test_a_name_that_is_not_a_plain_file_name_is_refused(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, f"name = {json.dumps(name)}\n")
    with pytest.raises(ConfigError) as err:
        load_file(path)
    assert str(err.value).startswith(f"{path}:1: name = ")
    assert "must be a plain file name" in str(err.value)


@pytest.mark.parametrize("name", ["demo", "my run 2", "qwen3-4b_v1.2", "ünïcode"])
def test_plain_names_are_accepted(tmp_path: Path, name: str) -> None:
    assert load_file(write(tmp_path, f"name = {json.dumps(name)}\n")).name == name


def test_paths_with_a_nul_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"model\.path = .*no control characters"):
        apply_assignments(Settings(), ['model.path="a\\u0000b"'])


def test_deeply_nested_toml_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="invalid TOML: nested too deeply"):
        load_file(write(tmp_path, "name = " + "[" * 5000 + "\n"))
    with pytest.raises(ConfigError, match="not valid TOML"):
        apply_assignments(Settings(), ["scu.lr_bounds=" + "[" * 5000])


def test_merge_refuses_a_value_that_is_not_a_table() -> None:
    with pytest.raises(ConfigError, match="expected a table of settings, got a list"):
        merge(Settings(), [1, 2], source="run.json")  # type: ignore[arg-type]
