"""Did the fine-tune help? The base model against a run's adapters on the test split."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import TrainedDemo, scu

from scu_tui.compare import COMPARISON_FILE, compare_run, is_right, normalised
from scu_tui.runfolder import load_run_settings


@pytest.fixture(scope="module")
def trained(trained_demo: TrainedDemo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the session's demo run: comparing writes comparison.json into the run."""
    return Path(shutil.copytree(trained_demo.folder, tmp_path_factory.mktemp("compare") / "run"))


@pytest.mark.slow
def test_the_demo_adapters_fix_answers_the_base_model_gets_wrong(trained: Path) -> None:
    settings = load_run_settings(trained)
    result = compare_run(trained, settings, samples=8)
    assert result.split == "test" and result.rows > 0
    assert result.tuned_loss < result.base_loss / 2  # the demo's base never saw a chat turn
    assert result.tuned_perplexity < result.base_perplexity
    fixed = [e for e in result.examples if e.verdict == "fixed"]
    assert fixed, "\n".join(result.lines())
    example = fixed[0]
    assert is_right(example.tuned_answer, example.reference)
    assert not is_right(example.base_answer, example.reference)
    assert example.tuned_loss < example.base_loss
    saved = json.loads((trained / COMPARISON_FILE).read_text())
    assert saved["fixed"] == len(fixed) and saved["examples"][0]["verdict"]


@pytest.mark.slow
def test_the_base_side_is_the_base_model_itself(trained: Path) -> None:
    """Switching the LoRA layers off gives exactly the base model's loss."""
    import mlx.core as mx

    from scu_tui.compare import _split_loss, load_test_set
    from scu_tui.training.model import load_model

    settings = load_run_settings(trained)
    model, tokenizer = load_model(settings.model.path)
    base = _split_loss(model, load_test_set(settings, tokenizer).split, settings)
    result = compare_run(trained, settings, samples=0, write=False)
    mx.eval(mx.array(0))
    assert result.base_loss == pytest.approx(base, rel=1e-6)
    assert result.examples == []


def test_answers_are_matched_loosely_but_not_by_accident() -> None:
    assert normalised("  The Capital of France  is Paris. ") == "the capital of france is paris"
    assert is_right("3 plus 14 is 17.", "3 plus 14 is 17.")
    assert is_right("3 PLUS 14 IS 17!\nAnything after", "3 plus 14 is 17.")
    assert not is_right("A: 3 plus 14 is 17.", "3 plus 14 is 17.")
    assert not is_right("", "anything") and not is_right("anything", "")


@pytest.mark.slow
def test_scu_tui_compare_prints_and_writes_it(trained: Path) -> None:
    result = scu("compare", str(trained), "--samples", "3")
    assert result.returncode == 0, result.stderr
    assert "loss" in result.stdout and "sampled prompts" in result.stdout
    assert f"written to {trained / COMPARISON_FILE}" in result.stdout
    assert scu("compare", str(trained.parent / "missing")).returncode == 2
