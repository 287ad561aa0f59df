"""`scu-tui check` against real runs: its peak memory and seconds per step, predicted
before training, set beside what a run with the same settings measures (separate
processes, as a user runs them: MLX's peak memory is per process)."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path
from typing import Any

import pytest
from helpers import read_events, scu

pytestmark = pytest.mark.slow

MEMORY_TOLERANCE = 0.30
TIME_TOLERANCE = 0.50
TIME_ATTEMPTS = 3  # a shared machine may slow one of the two measurements


def build_qwen3_25m(out: Path) -> int:
    """A ~25M-parameter Qwen3 (random init, float32) with the demo's tokenizer; its count."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models.qwen3 import Model, ModelArgs

    from scu_tui.demo import MODEL_DIR

    config = json.loads((MODEL_DIR / "config.json").read_text(encoding="utf-8"))
    config.update(
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=8,
        max_window_layers=8,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=64,
    )
    mx.random.seed(0)
    model = Model(ModelArgs.from_dict(config))
    weights = {k: v.astype(mx.float32) for k, v in tree_flatten(model.parameters())}
    out.mkdir(parents=True)
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})
    (out / "config.json").write_text(json.dumps(config), encoding="utf-8")
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(MODEL_DIR / name, out / name)
    return sum(v.size for v in weights.values())


def long_text_data(out: Path, rows: int = 48) -> Path:
    """Text rows far longer than the test's max_seq_length, so every batch has one width."""
    from scu_tui.demo import DATA_DIR

    answers = [
        json.loads(line)["messages"][1]["content"]
        for line in (DATA_DIR / "train.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    out.mkdir(parents=True)
    for split, count in (("train", rows), ("valid", 8)):
        lines = [
            json.dumps({"text": " ".join(answers[i * 12 : i * 12 + 12])}) for i in range(count)
        ]
        (out / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def qwen3_25m(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("qwen3-25m")
    count = build_qwen3_25m(root / "model")
    assert 24e6 < count < 27e6
    return root / "model", long_text_data(root / "data")


def check_json(*args: str) -> dict[str, Any]:
    done = scu("check", *args, "--json", timeout=600)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def measured(run_dir: Path, skip: int) -> tuple[float, float]:
    """(the run's peak memory in GB, its mean seconds per step after ``skip`` steps: the
    ETA is a mean over the widths the data gives)."""
    steps = [e for e in read_events(run_dir) if e["type"] == "step"]
    assert len(steps) > skip
    peak = max(e["peak_memory_gb"] for e in steps)
    return peak, statistics.fmean(e["step_seconds"] for e in steps[skip:])


def assert_close(predicted: float, actual: float, tolerance: float, what: str) -> None:
    assert abs(predicted - actual) <= tolerance * actual, (
        f"{what}: predicted {predicted:.4g}, measured {actual:.4g} "
        f"({predicted / actual - 1:+.0%}, allowed ±{tolerance:.0%})"
    )


def compare(flags: list[str], out: Path, skip: int) -> dict[str, Any]:
    """The check's prediction, then a real run with the same flags: memory must agree at
    once (allocations are deterministic); time is measured again if the two disagree,
    up to TIME_ATTEMPTS times, as another process on a shared machine may have slowed
    one of them."""
    # the check predicts the training step; the samples generated at evaluations and the
    # comparison at the end allocate for generation, which is no part of it
    flags = [*flags, "--set", "training.samples=0", "--set", "training.compare_at_end=false"]
    for attempt in range(TIME_ATTEMPTS):
        report = check_json(*flags)
        run_dir = out / f"run-{attempt}"
        run = scu("--headless", *flags, "--mode", "observe", "--output-dir", str(run_dir))
        assert run.returncode == 0, run.stderr
        peak, seconds = measured(run_dir, skip)
        assert_close(report["peak_memory_gb"], peak, MEMORY_TOLERANCE, "peak memory (GB)")
        assert report["peak_memory_gb"] >= peak, "the estimate errs on the cautious side"
        if abs(report["seconds_per_step"] - seconds) <= TIME_TOLERANCE * seconds:
            break
    assert_close(report["seconds_per_step"], seconds, TIME_TOLERANCE, "seconds per step")
    return report


@pytest.mark.parametrize("grad_checkpoint", [False, True])
def test_qwen3_25m_prediction_matches_a_real_run(
    qwen3_25m: tuple[Path, Path], tmp_path: Path, grad_checkpoint: bool
) -> None:
    model, data = qwen3_25m
    flags = [
        "--model", str(model), "--data", str(data),
        "--set", "data.max_seq_length=96",
        "--set", f"training.grad_checkpoint={str(grad_checkpoint).lower()}",
        "--set", "training.eval_batches=2",
        "--set", "training.eval_every=1000",
        "--max-steps", "8",
    ]  # fmt: skip
    report = compare(flags, tmp_path, skip=2)
    assert report["memory"]["sequence_length"] == 96 and report["memory"]["batch_size"] == 4
    assert report["memory"]["grad_checkpoint"] is grad_checkpoint
    assert report["model_source"] == "weights" and report["fits"] is True


def test_demo_prediction_matches_a_real_run(tmp_path: Path) -> None:
    flags = [
        "--preset", "demo", "--max-steps", "60",
        "--set", "training.eval_every=1000", "--set", "training.eval_batches=2",
    ]  # fmt: skip
    report = compare(flags, tmp_path, skip=10)  # every width has compiled by step 10
    widths = report["data"]["batch_widths"]
    assert report["memory"]["sequence_length"] == max(int(w) for w in widths)


def test_config_alone_errs_on_the_cautious_side(
    qwen3_25m: tuple[Path, Path], tmp_path: Path
) -> None:
    """Before the download: no weights, no probe; the estimate from the config's counts
    is above the real peak, and not absurdly so."""
    model, data = qwen3_25m
    config_only = tmp_path / "config-only"
    config_only.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(model / name, config_only / name)
    flags = ["--data", str(data), "--set", "data.max_seq_length=96"]
    alone = check_json("--model", str(config_only), *flags)
    full = check_json("--model", str(model), *flags)
    assert alone["model_source"] == "config" and alone["seconds_per_step"] is None
    assert alone["model"]["parameters"] == full["model"]["parameters"]
    assert alone["model"]["trainable"] == full["model"]["trainable"]
    assert alone["tokens_per_step"] == full["tokens_per_step"]
    terms = full["memory"]["terms"]
    measured_peak = sum(t["gb"] for t in terms if not t["name"].startswith("safety margin"))
    assert measured_peak <= alone["peak_memory_gb"] <= 2.0 * measured_peak
