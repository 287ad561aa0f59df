"""Did the fine-tune help? The base model and a run's adapters, side by side, on the test
split (the validation split when there is none).

Two answers: the token-weighted loss (and perplexity) of both over the whole split, and
for a fixed sample of its prompts the answer each one generates, judged against the
reference: which examples the adapters *fixed* (the base got it wrong, the adapters
right) and which they *broke*. A reference is matched after normalising case, spaces and
final punctuation; when the data has no prompts (the text format), only the losses are
compared, per example as well.

All MLX work happens on the calling thread; the result is plain data (``to_dict``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from scu_tui.config import Settings
from scu_tui.errors import UserError
from scu_tui.protocol import RunFile
from scu_tui.training.checkpoint import atomic_write_json

#: Written into the run folder by :func:`compare_run`.
COMPARISON_FILE = "comparison.json"
#: Prompts whose answers are generated and judged (evenly spread over the split).
SAMPLES = 8
#: Tokens generated per answer.
MAX_TOKENS = 48


@dataclass
class Example:
    """One test prompt: what each model answered, and its loss on the reference."""

    index: int
    prompt: str
    reference: str
    base_answer: str
    tuned_answer: str
    base_loss: float
    tuned_loss: float
    base_right: bool | None  # None: nothing to judge against (text data)
    tuned_right: bool | None

    @property
    def verdict(self) -> str:
        """fixed, broke, both right, both wrong, or better/worse by loss alone."""
        if self.base_right is None or self.tuned_right is None:
            return "better" if self.tuned_loss < self.base_loss else "worse"
        if self.tuned_right and not self.base_right:
            return "fixed"
        if self.base_right and not self.tuned_right:
            return "broke"
        return "both right" if self.tuned_right else "both wrong"


@dataclass
class Comparison:
    split: str
    rows: int
    adapters: str  # the adapter folder compared
    base_loss: float
    tuned_loss: float
    examples: list[Example] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def base_perplexity(self) -> float:
        return math.exp(min(self.base_loss, 50.0))

    @property
    def tuned_perplexity(self) -> float:
        return math.exp(min(self.tuned_loss, 50.0))

    def count(self, verdict: str) -> int:
        return sum(1 for e in self.examples if e.verdict == verdict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["base_perplexity"] = self.base_perplexity
        data["tuned_perplexity"] = self.tuned_perplexity
        for example, item in zip(self.examples, data["examples"], strict=True):
            item["verdict"] = example.verdict
        data["fixed"], data["broke"] = self.count("fixed"), self.count("broke")
        return data

    def lines(self) -> list[str]:
        """The comparison as a person reads it."""
        out = [
            f"{self.split} split, {self.rows} rows: base vs adapters ({self.adapters})",
            f"  loss       {self.base_loss:.4f} -> {self.tuned_loss:.4f}",
            f"  perplexity {self.base_perplexity:.2f} -> {self.tuned_perplexity:.2f}",
        ]
        if self.examples:
            out.append(
                f"  {len(self.examples)} sampled prompts: {self.count('fixed')} fixed, "
                f"{self.count('broke')} broke, {self.count('both right')} right before and "
                f"after, {self.count('both wrong')} wrong before and after"
            )
        for e in self.examples:
            out.append(f"  [{e.verdict}] {e.prompt}")
            out.append(f"      reference: {first_line(e.reference)}")
            out.append(f"      base:      {first_line(e.base_answer)}")
            out.append(f"      adapters:  {first_line(e.tuned_answer)}")
        return out


def first_line(text: str) -> str:
    """An answer on one line: its first, and a mark when more followed."""
    lines = text.strip().splitlines()
    return (lines[0] + (" …" if len(lines) > 1 else "")) if lines else "(nothing)"


def normalised(text: str) -> str:
    """Lower case, single spaces, no final punctuation: how answers are matched."""
    return " ".join(text.lower().split()).rstrip(" .!?")


def is_right(answer: str, reference: str) -> bool:
    """The answer is the reference (normalised), possibly followed by more text."""
    got, want = normalised(answer), normalised(reference)
    return bool(want) and (got == want or got.startswith(want + " ") or got.startswith(want))


def prompt_and_reference(row: dict[str, Any], fmt: str) -> tuple[list[dict[str, str]], str] | None:
    """The prompt messages and the reference answer of a row (None for text rows)."""
    if fmt == "chat":
        messages = [m for m in row.get("messages") or [] if isinstance(m, dict)]
        if len(messages) < 2 or messages[-1].get("role") != "assistant":
            return None
        prompt = [{"role": str(m["role"]), "content": str(m["content"])} for m in messages[:-1]]
        return prompt, str(messages[-1].get("content") or "")
    if fmt == "completions":
        return [{"role": "user", "content": str(row["prompt"])}], str(row["completion"])
    return None


def _prompt_text(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return str(text)
    return "\n".join(m["content"] for m in messages) + "\n"


def _generate(model: Any, tokenizer: Any, prompt: str, max_tokens: int) -> str:
    from mlx_lm import generate

    return str(generate(model, tokenizer, prompt=prompt, max_tokens=max_tokens)).strip()


def _split_loss(model: Any, split: Any, settings: Settings) -> float:
    """Token-weighted loss over every row of a split (as validation is computed)."""
    import mlx.core as mx

    from scu_tui.training.data import eval_batches
    from scu_tui.training.trainer import loss_fn

    model.eval()
    total, count = 0.0, 0
    batch_size = min(settings.training.batch_size, len(split))
    for batch, lengths in eval_batches(split, batch_size, settings.data.max_seq_length, -1):
        loss, ntoks = loss_fn(model, mx.array(batch), mx.array(lengths))
        mx.eval(loss, ntoks)
        n = int(ntoks.item())
        total += float(loss.item()) * n
        count += n
    return total / count if count else math.nan


def _row_loss(model: Any, sequence: tuple[list[int], int], settings: Settings) -> float:
    import mlx.core as mx

    from scu_tui.training.data import make_batch
    from scu_tui.training.trainer import loss_fn

    batch, lengths = make_batch([sequence], settings.data.max_seq_length)
    loss, _ = loss_fn(model, mx.array(batch), mx.array(lengths))
    mx.eval(loss)
    return float(loss.item())


@contextmanager
def lora_off(model: Any, base: Mapping[str, Any] | None = None) -> Iterator[None]:
    """The base model, for a while, and put back after. Spares loading the base a second
    time for LoRA and DoRA: every LoRA layer's scale set to 0 (its output is then exactly
    the frozen layer's); a DoRA layer's also, and its magnitude set back to the frozen
    weight's row norms (as DoRA starts). For full fine-tuning, ``base`` holds the base
    values of the trained weights (:func:`base_weights`), swapped in."""
    from mlx.utils import tree_flatten
    from mlx_lm.tuner.dora import DoRAEmbedding, DoRALinear
    from mlx_lm.tuner.lora import LoRAEmbedding, LoRALinear, LoRASwitchLinear

    kinds = (LoRALinear, LoRASwitchLinear, LoRAEmbedding, DoRALinear, DoRAEmbedding)
    layers = [m for _, m in model.named_modules() if isinstance(m, kinds)]
    scales = [layer.scale for layer in layers]
    magnitudes = [getattr(layer, "m", None) for layer in layers]
    tuned = dict(tree_flatten(model.parameters()))
    swapped = [(k, tuned[k]) for k in (base or {}) if k in tuned]
    for layer in layers:
        layer.scale = 0.0
        if isinstance(layer, DoRALinear):
            layer.set_linear(layer.linear)  # m = the frozen weight's row norms
        elif isinstance(layer, DoRAEmbedding):
            layer.set_embedding(layer.embedding)
    if base:
        model.load_weights([(k, base[k]) for k, _ in swapped], strict=False)
    try:
        yield
    finally:
        for layer, scale, m in zip(layers, scales, magnitudes, strict=True):
            layer.scale = scale
            if m is not None:
                layer.m = m
        if swapped:
            model.load_weights(swapped, strict=False)


def base_weights(settings: Settings, model: Any) -> dict[str, Any]:
    """The base model's values of ``model``'s trainable weights (read from its folder),
    for :func:`lora_off` on a fully fine-tuned model; empty for LoRA and DoRA."""
    if settings.lora.type != "full":
        return {}
    from mlx.utils import tree_flatten
    from mlx_lm.utils import dequantize_model

    from scu_tui.training.model import load_model

    names = {k for k, _ in tree_flatten(model.trainable_parameters())}
    base, _ = load_model(settings.model.path)
    if settings.lora.dequantize:
        dequantize_model(base)
    return {k: v for k, v in tree_flatten(base.parameters()) if k in names}


def load_adapters_into(model: Any, settings: Settings, adapters: Path) -> None:
    """LoRA layers as the run made them, with the weights it saved in ``adapters``."""
    import mlx.core as mx

    from scu_tui.training.model import apply_lora

    mx.random.seed(settings.training.seed)
    apply_lora(model, settings.lora, settings.model.path)
    try:
        model.load_weights(str(adapters / RunFile.ADAPTERS), strict=False)
    except (ValueError, RuntimeError, OSError) as exc:
        raise UserError(f"{adapters}: the adapters do not load into this model: {exc}") from None


def adapter_folder(run_dir: Path) -> Path:
    """The run's best adapters when it has them, else its last ones."""
    best = run_dir / RunFile.BEST
    if (best / RunFile.ADAPTERS).is_file():
        return best
    if (run_dir / RunFile.ADAPTERS).is_file():
        return run_dir
    raise UserError(f"{run_dir}: no adapters yet (the run has not saved any)")


@dataclass(frozen=True)
class TestSet:
    """The split to compare on, tokenized, with its rows as read (for prompts)."""

    name: str
    split: Any  # a training.data.Split
    rows: list[dict[str, Any]]
    format: str


def load_test_set(settings: Settings, tokenizer: Any) -> TestSet:
    from scu_tui.training.data import Split, raw_split, tokenize_rows

    name, raw, fmt = raw_split(settings.data, ("test", "valid"), settings.training.seed)
    sequences = tokenize_rows(
        raw.rows, tokenizer, fmt, settings.data.mask_prompt, raw.label, raw.where
    )
    rows = [dict(raw.rows[i]) for i in range(len(raw.rows))]
    return TestSet(name, Split(name, raw.label, sequences), rows, fmt)


def sample_indices(rows: int, samples: int) -> list[int]:
    """``samples`` row indices spread evenly over the split (fixed: the same every time)."""
    if samples <= 0 or rows <= 0:
        return []
    return sorted({round(i * (rows - 1) / max(samples - 1, 1)) for i in range(samples)})


def compare_model(
    model: Any,
    tokenizer: Any,
    settings: Settings,
    tests: TestSet,
    adapters: str,
    samples: int = SAMPLES,
    max_tokens: int = MAX_TOKENS,
) -> Comparison:
    """``model`` with its adapters loaded against itself with them switched off."""
    tic = time.perf_counter()
    picks = sample_indices(len(tests.rows), samples)
    prompts = {i: prompt_and_reference(tests.rows[i], tests.format) for i in picks}

    def answers() -> tuple[float, dict[int, tuple[str, float]]]:
        loss = _split_loss(model, tests.split, settings)
        out = {}
        for i in picks:
            pr = prompts[i]
            prompt = _prompt_text(tokenizer, pr[0]) if pr else ""
            text = _generate(model, tokenizer, prompt, max_tokens) if pr else ""
            out[i] = (text, _row_loss(model, tests.split.sequences[i], settings))
        return loss, out

    training = getattr(model, "training", False)
    originals = base_weights(settings, model)
    try:
        with lora_off(model, originals):
            base_loss, base = answers()
        tuned_loss, tuned = answers()
    finally:
        model.train(training)
    examples = []
    for i in picks:
        pr = prompts[i]
        reference = pr[1] if pr else ""
        shown = pr[0][-1]["content"] if pr else str(tests.rows[i].get("text", ""))[:80]
        examples.append(
            Example(
                index=i,
                prompt=shown,
                reference=reference,
                base_answer=base[i][0],
                tuned_answer=tuned[i][0],
                base_loss=base[i][1],
                tuned_loss=tuned[i][1],
                base_right=is_right(base[i][0], reference) if pr else None,
                tuned_right=is_right(tuned[i][0], reference) if pr else None,
            )
        )
    return Comparison(
        split=tests.name,
        rows=len(tests.rows),
        adapters=adapters,
        base_loss=base_loss,
        tuned_loss=tuned_loss,
        examples=examples,
        seconds=time.perf_counter() - tic,
    )


def compare_run(
    run_dir: Path,
    settings: Settings,
    samples: int = SAMPLES,
    max_tokens: int = MAX_TOKENS,
    write: bool = True,
) -> Comparison:
    """``scu-tui compare DIR``: the base model against the run's best adapters (its last
    ones when it has no best yet) on its test (else validation) split."""
    from scu_tui.training.model import load_model

    adapters = adapter_folder(run_dir)
    model, tokenizer = load_model(settings.model.path)
    tests = load_test_set(settings, tokenizer)
    load_adapters_into(model, settings, adapters)
    result = compare_model(model, tokenizer, settings, tests, str(adapters), samples, max_tokens)
    if write:
        atomic_write_json(run_dir / COMPARISON_FILE, result.to_dict())
    return result
