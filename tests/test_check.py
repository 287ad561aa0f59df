"""`scu-tui check`: the command as a user runs it, and the pieces it is built from."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
from helpers import scu

from bench.workloads import QWEN3_4B_MLX_4BIT
from scu_tui.check.data_report import batch_width, loss_tokens, report
from scu_tui.check.find_lr import suggest
from scu_tui.check.memory import (
    Coefficients,
    estimate,
    from_config,
    kept_state_bytes,
    largest,
    largest_batch,
    largest_width,
)
from scu_tui.check.model_facts import ModelFacts
from scu_tui.check.watchdog import MemoryWatchdog
from scu_tui.demo import MODEL_DIR
from scu_tui.presets import load_preset
from scu_tui.training.data import DataBundle, Split

REQUIRED_JSON = ("peak_memory_gb", "seconds_per_step", "tokens_per_step", "fits", "verdict")


def check(*args: str) -> tuple[int, dict[str, Any] | None, str]:
    done = scu("check", *args, "--json", timeout=300)
    data = json.loads(done.stdout) if done.returncode == 0 else None
    return done.returncode, data, done.stderr


def config_folder(root: Path, config: dict[str, Any], tokenizer: bool = False) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(config), encoding="utf-8")
    if tokenizer:
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(MODEL_DIR / name, root / name)
    return root


def demo_config() -> dict[str, Any]:
    config: dict[str, Any] = json.loads((MODEL_DIR / "config.json").read_text(encoding="utf-8"))
    return config


# --- the command --------------------------------------------------------------------------


@pytest.mark.slow
def test_demo_check_reports_everything_in_80_columns() -> None:
    done = scu("check", "--preset", "demo", timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    sections = {"environment", "model", "data", "memory", "time", "verdict"}
    assert sections <= set(lines)
    text = done.stdout
    assert "656,768" in text and "65,536 trainable" in text  # the demo's parameters
    assert "1,161" in text  # train rows
    assert "padding" in text and "fits: peak" in text
    assert "per step" in text and "ETA" in text


@pytest.mark.slow
def test_demo_json_has_the_promised_keys_and_a_measured_time() -> None:
    code, data, err = check("--preset", "demo", "--max-steps", "300")
    assert code == 0, err
    assert data is not None
    assert all(key in data for key in REQUIRED_JSON)
    assert data["fits"] is True and data["verdict"].startswith("fits")
    assert data["seconds_per_step"] > 0 and data["tokens_per_step"] > 0
    assert data["eta_seconds"] >= 300 * data["seconds_per_step"]
    assert data["model"]["trainable"] == 65536 and data["model_source"] == "weights"
    # 1,161 train rows in batches of 4: the longest row is left out of every epoch
    assert data["data"]["rows_per_epoch"] == 1160
    assert data["epochs"] == pytest.approx(300 * 4 / 1160)
    terms = {t["grows_with"] for t in data["memory"]["terms"]}
    assert {"parameters", "batch x sequence", "batch x sequence^2", "batch x seq x vocab"} <= terms
    assert sum(t["gb"] for t in data["memory"]["terms"]) == pytest.approx(data["peak_memory_gb"])
    assert data["memory"]["other"]["grad_checkpoint"] is True


@pytest.mark.slow
def test_config_alone_gives_an_estimate_without_a_time(tmp_path: Path) -> None:
    folder = config_folder(tmp_path / "demo-config", demo_config())
    code, data, err = check("--preset", "demo", "--model", str(folder))
    assert code == 0, err
    assert data is not None
    assert data["model_source"] == "config" and data["seconds_per_step"] is None
    assert data["model"]["parameters"] == 656768 and data["model"]["trainable"] == 65536
    assert data["peak_memory_gb"] > 0 and data["fits"] is True
    assert data["data"]["tokenized"] is False  # no tokenizer: rows only
    assert [s["rows"] for s in data["data"]["splits"]] == [1161, 174, 117]
    assert data["memory"]["sequence_length"] == 128  # max_seq_length: no lengths known
    text = scu("check", "--preset", "demo", "--model", str(folder), timeout=300)
    assert text.returncode == 0 and "not measured: no weights" in text.stdout
    assert max(len(line) for line in text.stdout.splitlines()) <= 80  # long paths wrap


@pytest.mark.slow
def test_config_alone_with_a_tokenizer_counts_tokens(tmp_path: Path) -> None:
    folder = config_folder(tmp_path / "demo-config", demo_config(), tokenizer=True)
    code, data, err = check("--preset", "demo", "--model", str(folder))
    assert code == 0, err
    assert data is not None and data["data"]["tokenized"] is True
    assert data["memory"]["sequence_length"] == 65  # the widest batch the demo data gives
    assert data["seconds_per_step"] is None


@pytest.mark.slow
def test_reference_workload_from_its_config_alone(tmp_path: Path) -> None:
    """Qwen3-4B, 4-bit, group 64, r=32, batch 2 at 2048 tokens, before any download."""
    folder = config_folder(tmp_path / "qwen3-4b", QWEN3_4B_MLX_4BIT)
    code, data, err = check(
        "--preset", "qwen3-4b-mlx-4bit", "--model", str(folder), "--data", "@demo"
    )
    assert code == 0, err
    assert data is not None
    model = data["model"]
    assert model["parameters"] == pytest.approx(4.02e9, rel=0.01)
    assert model["quantization"] == "4-bit, group 64"
    assert model["weight_bytes"] / 1e9 == pytest.approx(2.26, abs=0.02)
    assert model["trainable"] == 66060288  # r=32 on q, k, v, o, gate, up, down of 36 blocks
    memory = data["memory"]
    assert (memory["batch_size"], memory["sequence_length"]) == (2, 2048)
    weights = {t["name"]: t["gb"] for t in memory["terms"]}
    assert weights["optimizer state"] == pytest.approx(2 * weights["LoRA weights"])
    assert memory["other"]["peak_memory_gb"] < data["peak_memory_gb"]  # checkpointing helps
    assert data["seconds_per_step"] is None and isinstance(data["fits"], bool)
    if not data["fits"]:
        assert data["fixes"] and data["verdict"].startswith("does not fit")


@pytest.mark.slow
def test_grad_checkpoint_setting_is_recommended_when_it_makes_the_run_fit(tmp_path: Path) -> None:
    """A config-only estimate against this machine's budget: long sequences do not fit
    without checkpointing, and the verdict says what to change."""
    folder = config_folder(tmp_path / "qwen3-4b", QWEN3_4B_MLX_4BIT)
    code, data, err = check(
        "--preset", "qwen3-4b-mlx-4bit", "--model", str(folder), "--data", "@demo",
        "--set", "data.max_seq_length=40960", "--set", "training.batch_size=64",
    )  # fmt: skip
    assert code == 0, err
    assert data is not None and data["fits"] is False
    assert data["verdict"].startswith("does not fit")
    assert any("training.batch_size" in f or "max_seq_length" in f for f in data["fixes"])


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--set", "training.lr=1e-3"], "unknown key 'training.lr'"),
        (["--model", "/nonexistent/model"], "no such directory"),
        (["--data", "/nonexistent/data.jsonl"], "no such file"),
        (["--preset", "no-such-preset"], "unknown preset"),
        (["--set", "training.batch_size=0"], "training.batch_size"),
    ],
)
@pytest.mark.slow
def test_bad_input_is_one_line_and_exit_2(args: list[str], says: str) -> None:
    done = scu("check", *args, timeout=300)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("scu-tui: error: ") and says in lines[0]
    assert done.stdout == ""


@pytest.mark.slow
def test_bad_model_folders_are_bad_input(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json", encoding="utf-8")
    unknown = config_folder(tmp_path / "unknown", {"model_type": "no-such-architecture"})
    for folder, says in (
        (empty, "no config.json"),
        (broken, "not valid JSON"),
        (unknown, "cannot build it from config.json"),
    ):
        done = scu("check", "--model", str(folder), timeout=300)
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and says in lines[0] and str(folder) in lines[0]


@pytest.mark.slow
def test_find_lr_on_the_demo_suggests_a_rate_where_the_tuned_one_sits() -> None:
    """docs/benchmarks.md's sweep: 1e-3 is the demo's best base LR; 5e-4 and 2e-3, its
    neighbours on the grid, end within 50 % of it, 2e-4 and 5e-3 far worse."""
    code, data, err = check("--preset", "demo", "--find-lr")
    assert code == 0, err
    assert data is not None
    suggested = data["find_lr"]["suggested_learning_rate"]
    assert 5e-4 <= suggested <= 2e-3
    curve = data["find_lr"]["curve"]
    assert len(curve) >= 50 and curve[0]["lr"] < 1e-5
    text = scu("check", "--preset", "demo", "--find-lr", timeout=300)
    assert text.returncode == 0
    assert "--set training.learning_rate=" in text.stdout
    assert max(len(line) for line in text.stdout.splitlines()) <= 80


def test_find_lr_says_why_it_does_not_run_for_prodigy() -> None:
    """Prodigy's LR is a factor on the step size it estimates: a range test over it means
    nothing, and the check says so instead of suggesting a rate."""
    code, data, err = check(
        "--preset", "demo", "--find-lr", "--config-only", "--set", "training.optimizer=prodigy"
    )
    assert code == 0, err
    assert data is not None and data["find_lr"] is None
    assert any("prodigy" in note and "--find-lr" in note for note in data["notes"])


# --- the pieces ---------------------------------------------------------------------------


def facts(**changes: Any) -> ModelFacts:
    base: dict[str, Any] = {
        "model_type": "qwen3", "parameters": 10_000_000, "weight_bytes": 40_000_000,
        "trainable": 100_000, "trainable_bytes": 400_000, "lora_modules": 28, "lora_rank": 8,
        "lora_dropout": False, "quantization": "none", "dtype": "float32", "act_bytes": 4,
        "layers": 4, "hidden": 256, "intermediate": 768, "heads": 4, "kv_heads": 2,
        "head_dim": 64, "vocab": 1000, "max_positions": 4096,
    }  # fmt: skip
    base.update(changes)
    return ModelFacts(**base)


def test_estimate_grows_with_batch_and_sequence_and_terms_add_up() -> None:
    f = facts()
    c = from_config(f, grad_checkpoint=False)
    small, wide, big = (estimate(f, c, b, w) for b, w in ((1, 64), (1, 256), (4, 256)))
    assert small.total < wide.total < big.total
    assert big.total == pytest.approx(sum(t.bytes for t in big.terms))
    by_name = {t.name: t.bytes for t in big.terms}
    assert by_name["weights"] == 40_000_000
    assert by_name["optimizer state"] == 2 * by_name["LoRA weights"] == 800_000
    # attention grows with the square of the sequence, the rest linearly
    attn = {w: {t.name: t.bytes for t in estimate(f, c, 1, w).terms} for w in (100, 200)}
    assert attn[200]["attention scores"] == pytest.approx(4 * attn[100]["attention scores"])
    assert attn[200]["logits and loss"] == pytest.approx(2 * attn[100]["logits and loss"])
    ckpt = from_config(f, grad_checkpoint=True)
    assert estimate(f, ckpt, 4, 1024).total < estimate(f, c, 4, 1024).total


def test_largest_batch_and_width_are_the_limits_of_the_estimate() -> None:
    f = facts()
    c = Coefficients(0.0, 50_000.0, 2_000.0, 30.0, measured=True)
    limit = 2e9
    b = largest_batch(f, c, 512, limit, grad_checkpoint=False, accumulation=1)
    assert estimate(f, c, b, 512).total <= limit < estimate(f, c, b + 1, 512).total
    w = largest_width(f, c, 8, limit, grad_checkpoint=False, accumulation=1)
    assert estimate(f, c, 8, w).total <= limit < estimate(f, c, 8, w + 1).total
    assert largest_batch(f, c, 512, 1e6, grad_checkpoint=False, accumulation=1) == 0
    assert largest_width(f, c, 1, 1e12, grad_checkpoint=False, accumulation=1) == 4096  # context
    assert largest(lambda n: n <= 37, 1, 1000) == 37


def test_watchdog_pauses_once_per_level_near_the_budget() -> None:
    dog = MemoryWatchdog(limit_bytes=10_000_000_000)
    assert dog.check(5e9) is None and dog.check(9.1e9) is None
    alarm = dog.check(9.3e9)
    assert alarm is not None and alarm.pause
    assert "9.30 GB" in alarm.text and "93%" in alarm.text
    assert "checkpoint" in alarm.text and "training.grad_checkpoint" in alarm.text
    assert dog.check(9.3e9) is None and dog.check(9.6e9) is None  # a person resumed
    assert dog.check(9.8e9) is not None  # ... and it grew further
    assert MemoryWatchdog(limit_bytes=0).check(1e12) is None


def test_memory_limit_is_a_share_of_this_machine() -> None:
    from scu_tui.check import environment

    env = environment.detect()
    assert 0 < env.memory_limit <= env.memory_total
    assert environment.memory_limit_bytes() == env.memory_limit
    assert env.backend in ("CPU", "Metal", "CUDA", "GPU")


def test_data_report_padding_dropped_rows_and_loss_tokens() -> None:
    settings = load_preset("demo").replace(
        {"training.batch_size": 2, "data.max_seq_length": 64, "data.mask_prompt": True}
    )
    rows = [([1] * n, off) for n, off in ((10, 2), (20, 5), (40, 0), (100, 70), (5, 1))]
    split = Split("train", "t.jsonl", rows)
    bundle = DataBundle(split, Split("valid", "v.jsonl", rows[:2]), None, "completions")
    r = report(bundle, settings)
    # sorted by length 5, 10 | 20, 40 | 100 (left out): widths 33 and 64 (the cap)
    assert r.batch_widths == {33: 1, 64: 1} and r.max_width == 64 and r.rows_per_epoch == 4
    assert r.padding_share == pytest.approx(1 - (5 + 10 + 20 + 40) / (2 * 33 + 2 * 64))
    assert any("1 longest train row" in d for d in r.dropped)
    train = r.splits[0]
    assert (train.rows, train.max, train.truncated) == (5, 100, 1)
    assert train.cut_share == pytest.approx(36 / 175)
    assert r.cut_share(64) == pytest.approx(36 / 175) and r.cut_share(1000) == 0
    assert batch_width([100], 64) == 64 and batch_width([33], 128) == 65
    assert loss_tokens(10, 2, 33, 64) == 9 and loss_tokens(100, 70, 64, 64) == 0


def test_lr_suggestion_is_a_decade_below_the_smoothed_minimum() -> None:
    lrs = [1e-6 * 1.2**i for i in range(80)]
    loss = [5 - 3 * math.exp(-((math.log10(lr) + 2.5) ** 2)) for lr in lrs]
    suggested, lowest = suggest(lrs, loss)
    assert lowest is not None and suggested is not None
    assert math.log10(lowest) == pytest.approx(-2.5, abs=0.1)
    assert suggested == pytest.approx(lowest / 10)
    assert suggest(lrs[:4], loss[:4]) == (None, None)


@pytest.mark.slow
def test_grad_checkpoint_trains_the_same_with_less_memory() -> None:
    """training.grad_checkpoint: identical losses (no dropout), a lower peak, and only this
    model's blocks are affected (mlx-lm patches a class, which is per model here)."""
    import mlx.core as mx

    from scu_tui.training.data import load_data
    from scu_tui.training.model import apply_lora, load_model
    from scu_tui.training.trainer import Trainer

    def run(grad_checkpoint: bool) -> tuple[list[float], float, Trainer]:
        settings = load_preset("demo").replace(
            {"training.grad_checkpoint": grad_checkpoint, "training.warmup_steps": 0}
        )
        model, tokenizer = load_model("@demo")
        data = load_data(settings.data, tokenizer, 0)
        mx.random.seed(0)
        apply_lora(model, settings.lora, "@demo")
        trainer = Trainer(model, data, settings)
        trainer.train_step()  # compile, then measure
        mx.reset_peak_memory()
        resident = mx.get_active_memory()  # other tests' and models' arrays included
        losses = [trainer.train_step().loss for _ in range(4)]
        return losses, mx.get_peak_memory() - resident, trainer

    plain, plain_peak, plain_trainer = run(False)
    ckpt, ckpt_peak, ckpt_trainer = run(True)
    assert ckpt == plain
    assert ckpt_peak < plain_peak
    blocks = ckpt_trainer.model.layers
    assert all(getattr(type(b), "_scu_checkpointed", False) for b in blocks)
    assert not any(getattr(type(b), "_scu_checkpointed", False) for b in plain_trainer.model.layers)
    again, _, fresh = run(False)
    assert again == plain
    assert not any(getattr(type(b), "_scu_checkpointed", False) for b in fresh.model.layers)


# --- the verdict --------------------------------------------------------------------------


def verdict_for(limit_of: Any, blas_missing: bool = False) -> Any:
    """A check's result for a fixed model at batch 4 x 512 tokens, on a machine whose
    budget ``limit_of(estimate, with_checkpointing, at_batch_1)`` picks."""
    from scu_tui.check.data_report import DataReport, SplitStats
    from scu_tui.check.environment import Environment
    from scu_tui.check.report import CheckResult, Limits

    settings = load_preset("demo").replace({"training.batch_size": 4})
    f = facts()
    plain, ckpt = from_config(f, False), from_config(f, True)
    est = estimate(f, plain, 4, 512)
    other = estimate(f, ckpt, 4, 512, grad_checkpoint=True)
    limit = int(limit_of(est.total, other.total, estimate(f, plain, 1, 512).total))
    env = Environment(
        backend="CPU", device="test", blas="MLX's bundled BLAS", blas_missing=blas_missing,
        versions={}, platform="Linux", memory_kind="RAM", memory_total=2 * limit,
        memory_available=None, memory_limit=limit,
    )  # fmt: skip
    kw: dict[str, Any] = {"accumulation": 1}
    limits = Limits(
        batch=largest_batch(f, plain, 512, limit, grad_checkpoint=False, **kw),
        width=largest_width(f, plain, 4, limit, grad_checkpoint=False, **kw),
        batch_other=largest_batch(f, ckpt, 512, limit, grad_checkpoint=True, **kw),
        width_other=largest_width(f, ckpt, 4, limit, grad_checkpoint=True, **kw),
    )
    train = SplitStats("train", "t.jsonl", 1000, 300.0, 500.0, 512, 0, 0.0)
    data = DataReport("chat", (train,), batch_widths={512: 250}, max_width=512)
    return CheckResult(settings, env, "config", f, data, est, other, limits)


def test_verdict_fits_with_room_to_spare() -> None:
    r = verdict_for(lambda est, other, one: 10 * est)
    assert r.fits and r.verdict().startswith("fits: peak") and r.fixes() == []


def test_verdict_offers_a_smaller_batch_with_more_accumulation() -> None:
    r = verdict_for(lambda est, other, one: (est + one) / 2)
    assert not r.fits and r.verdict().startswith("does not fit")
    fix = r.fixes()[0]
    assert fix.startswith(f"lower training.batch_size to {r.limits.batch}")
    assert 1 <= r.limits.batch < 4
    assert f"gradient_accumulation_steps to {-(-4 // r.limits.batch)}" in fix
    assert fix in r.verdict()


def test_verdict_recommends_gradient_checkpointing_when_it_fits() -> None:
    r = verdict_for(lambda est, other, one: (est + other) / 2)
    assert not r.fits
    assert any(f.startswith("turn on training.grad_checkpoint") for f in r.fixes())


def test_verdict_names_the_openblas_install_without_it() -> None:
    r = verdict_for(lambda est, other, one: 10 * est, blas_missing=True)
    assert any("sudo apt-get install libopenblas0-pthread" in f for f in r.fixes())
    assert "sudo apt-get install" in r.to_text()


def test_the_kept_rollback_states_are_a_term_of_their_own() -> None:
    """K states, each the LoRA weights and AdamW's two moments: a 4B model's r32 adapters
    (~66M float32 parameters) come to about 0.8 GB a state."""
    f = facts()
    c = from_config(f, grad_checkpoint=False)
    plain, kept = estimate(f, c, 2, 128), estimate(f, c, 2, 128, kept_states=4)
    (term,) = [t for t in kept.terms if t.name.startswith("rollback states")]
    assert term.bytes == 4 * 3 * 400_000
    assert kept.total == pytest.approx(plain.total + term.bytes)
    four_b = facts(trainable_bytes=66_000_000 * 4)
    assert kept_state_bytes(four_b, 1) == pytest.approx(0.8e9, rel=0.02)
    c = Coefficients(0.0, 50_000.0, 2_000.0, 30.0, measured=True)
    b = largest_batch(f, c, 512, 2e9, grad_checkpoint=False, accumulation=1, kept_states=64)
    assert estimate(f, c, b, 512, kept_states=64).total <= 2e9
    assert estimate(f, c, b + 1, 512, kept_states=64).total > 2e9



@pytest.mark.parametrize(
    ("optimizer", "copies"), [("adamw", 2), ("schedule_free", 3), ("prodigy", 4)]
)
def test_the_optimizer_state_is_counted_for_each_optimizer(
    optimizer: str, copies: int, tmp_path: Path
) -> None:
    """Schedule-Free keeps one more copy of the adapters than AdamW, Prodigy two more: the
    check's optimizer term grows with them, and so does each kept rollback state."""
    folder = config_folder(tmp_path / "demo-config", demo_config())
    code, data, err = check(
        "--preset", "demo", "--model", str(folder), "--set", f"training.optimizer={optimizer!r}"
    )  # fmt: skip
    assert code == 0, err
    assert data is not None
    terms = {t["name"]: t["gb"] for t in data["memory"]["terms"]}
    assert terms["optimizer state"] == pytest.approx(copies * terms["LoRA weights"])
    ((name, kept),) = [(n, gb) for n, gb in terms.items() if n.startswith("rollback states")]
    states = int(name.split("(")[1].rstrip(")"))
    assert kept == pytest.approx(states * (1 + copies) * terms["LoRA weights"], rel=1e-3)


def test_the_first_state_and_the_trial_s_are_counted_beside_the_kept_ones(tmp_path: Path) -> None:
    """The S-SCU keeps its `scu.snapshots_kept` states and, over the first steps, the run's
    start beside them: the check counts one more state than the setting; none with the
    S-SCU off. The LR trial holds two more then (its start and its first branch's end)."""
    folder = config_folder(tmp_path / "demo-config", demo_config())
    expected = {
        ("true", "true"): ["rollback states (6)"],
        ("true", "false"): ["rollback states (4)"],
        ("false", "true"): [],
    }
    for (enabled, lr_trial), want in expected.items():
        code, data, err = check(
            "--preset", "demo", "--model", str(folder), "--set", "scu.snapshots_kept=3",
            "--set", f"scu.enabled={enabled}", "--set", f"scu.lr_trial={lr_trial}",
        )  # fmt: skip
        assert code == 0, err
        assert data is not None
        names = [t["name"] for t in data["memory"]["terms"] if t["name"].startswith("rollback")]
        assert names == want
