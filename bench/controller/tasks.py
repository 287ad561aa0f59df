"""The benchmark's two tasks: LoRA on the embedded demo, and a synthetic Markov chain with
a known loss floor, whose model and data reach the product's ``Run`` through a loader."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scu_tui.config import Settings, all_keys
from scu_tui.presets import load_preset
from scu_tui.training.loader import Loaded, Loader, LoraInfo


@dataclass
class Task:
    """What differs between the tasks; the arms and the Run are shared."""

    name: str
    description: str
    base_lr: float
    base_lr_note: str  # how the base was chosen
    metric: str  # "val loss" | "val loss - floor"
    settings: Settings
    floor: float = 0.0
    loader: Loader | None = None  # None: the product's (mlx-lm) loader
    split: str = "tuning"  # "tuning": may shape the S-SCU; "test": the headline, never
    overrides: dict[str, Any] = field(default_factory=dict)  # --set, on every arm


def demo_task(steps: int) -> Task:
    from bench.controller.lora_tasks import valid_rows
    from scu_tui.demo import build

    s = load_preset("demo").replace(
        {
            "training.max_steps": steps,
            "training.eval_every": 50,
            "training.eval_batches": -1,
            "training.save_every": 50,
            "training.warmup_steps": 10,
        }
    )
    return Task(
        name="demo-lora",
        description=(
            f"LoRA r{s.lora.rank} on the embedded demo model and chat data, batch "
            f"{s.training.batch_size}, {steps} steps, eval every {s.training.eval_every} "
            f"steps on the whole validation split ({valid_rows(build.DEMO_DIR / 'data')} rows)"
        ),
        base_lr=DEMO_BASE_LR,
        base_lr_note=DEMO_BASE_NOTE,
        metric="val loss",
        settings=s,
    )


#: Chosen with ``--sweep`` (the warmup+cosine arm over base lrs, see docs/benchmarks.md).
DEMO_BASE_LR = 1e-3
DEMO_BASE_NOTE = "the lowest of the warmup+cosine sweep below"
SYNTHETIC_BASE_LR = 1e-2
SYNTHETIC_BASE_NOTE = "the lowest of the warmup+cosine sweep below; 0.02 ties it"


# The synthetic task: an order-2 Markov chain over VOCAB tokens whose transition table is
# the softmax of a random n-gram MLP (the "teacher"); the model has the teacher's
# architecture, so the floor (the teacher's own NLL on the validation tokens) is reachable.
VOCAB = 32
ORDER = 2
DIM = 16
HIDDEN = 64
TEACHER_SCALE = 2.0  # logit scale: mean context entropy ~2.2 nats (log 32 = 3.47)
SEQ_TOKENS = 65  # 64 predicted tokens per sequence
TRAIN_SEQUENCES = 8192
VALID_SEQUENCES = 256
TASK_SEED = 20240601


def ngram_module() -> Any:
    import mlx.core as mx
    import mlx.nn as nn

    class NgramMLP(nn.Module):  # type: ignore[misc]
        """Logits for the next token from the previous ORDER tokens (VOCAB = start symbol)."""

        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(VOCAB + 1, DIM)
            self.hidden = nn.Linear(ORDER * DIM, HIDDEN)
            self.out = nn.Linear(HIDDEN, VOCAB)

        def context_logits(self, ctx: Any) -> Any:
            h = self.embed(ctx).reshape(*ctx.shape[:-1], ORDER * DIM)
            return self.out(nn.gelu(self.hidden(h)))

        def __call__(self, inputs: Any) -> Any:
            b, t = inputs.shape
            pad = mx.full((b, ORDER - 1), VOCAB, dtype=inputs.dtype)
            x = mx.concatenate([pad, inputs], axis=1)
            ctx = mx.stack([x[:, i : i + t] for i in range(ORDER)], axis=-1)
            return self.context_logits(ctx)

    return NgramMLP


def teacher_table() -> np.ndarray:
    """log P[prev2, prev1, next] of the chain: a random n-gram MLP's log-softmax (numpy)."""
    rng = np.random.default_rng(TASK_SEED)
    emb = rng.normal(size=(VOCAB + 1, DIM))
    w1 = rng.normal(size=(ORDER * DIM, HIDDEN)) * math.sqrt(2 / (ORDER * DIM))
    b1 = rng.normal(size=HIDDEN) * 0.5
    w2 = rng.normal(size=(HIDDEN, VOCAB)) * TEACHER_SCALE / math.sqrt(HIDDEN)
    a, b = np.meshgrid(np.arange(VOCAB + 1), np.arange(VOCAB), indexing="ij")
    h = np.concatenate([emb[a], emb[b]], axis=-1) @ w1 + b1
    gelu = 0.5 * h * (1 + np.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3)))
    logits = gelu @ w2
    logits -= logits.max(axis=-1, keepdims=True)
    return np.asarray(logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True)))


def sample_chain(logp: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` sequences of SEQ_TOKENS tokens; the first one is uniform."""
    cdf = np.cumsum(np.exp(logp), axis=-1)
    seqs = np.zeros((n, SEQ_TOKENS), np.int64)
    seqs[:, 0] = rng.integers(0, VOCAB, n)
    prev2 = np.full(n, VOCAB)
    for t in range(1, SEQ_TOKENS):
        u = rng.random(n)[:, None]
        nxt = np.minimum((cdf[prev2, seqs[:, t - 1]] < u).sum(axis=-1), VOCAB - 1)
        seqs[:, t] = nxt
        prev2 = seqs[:, t - 1]
    return seqs


def chain_nll(logp: np.ndarray, seqs: np.ndarray) -> float:
    """The chain's own mean NLL of every predicted token (tokens 1..): the loss floor."""
    prev2 = np.concatenate([np.full((seqs.shape[0], 1), VOCAB), seqs[:, :-2]], axis=1)
    return float(-logp[prev2, seqs[:, :-1], seqs[:, 1:]].mean())


class SyntheticLoader:
    """A fresh n-gram MLP and the chain's sequences, for the product's ``Run``: the whole
    model trains (no LoRA), and the data comes tokenized."""

    def __init__(self, data: Any) -> None:
        self.data = data  # a scu_tui.training.data.DataBundle

    def load(self, settings: Settings) -> Loaded:
        import mlx.core as mx
        from mlx.utils import tree_flatten

        mx.random.seed(settings.training.seed)  # the model's init, paired across arms
        model = ngram_module()()
        n = sum(v.size for _, v in tree_flatten(model.parameters()))
        lora = LoraInfo(n, n, {"fine_tune_type": "full", "model": "synthetic"})
        resolved = {"model": "synthetic", "data": "synthetic"}
        return Loaded(model, None, self.data, lora, resolved)


def synthetic_task(steps: int, name: str = "synthetic", eval_every: int = 25) -> Task:
    from scu_tui.training.data import DataBundle, Split

    logp = teacher_table()
    rng = np.random.default_rng(TASK_SEED + 1)
    train = sample_chain(logp, TRAIN_SEQUENCES, rng)
    valid = sample_chain(logp, VALID_SEQUENCES, rng)
    bundle = DataBundle(
        train=Split("train", "synthetic", [(list(map(int, r)), 0) for r in train]),
        valid=Split("valid", "synthetic", [(list(map(int, r)), 0) for r in valid]),
        test=None,
        format="text",
    )
    demo = load_preset("demo")
    s = demo.replace(
        {
            "name": name,
            "model.path": "synthetic",
            "data.path": "synthetic",
            "data.max_seq_length": SEQ_TOKENS,
            "lora.dropout": 0.0,
            "training.batch_size": 16,
            "training.gradient_accumulation_steps": 1,
            "training.max_steps": steps,
            "training.eval_every": eval_every,
            "training.eval_batches": -1,
            "training.save_every": 2 * eval_every,
            "training.warmup_steps": 10,
        }
    )

    floor = chain_nll(logp, valid)
    return Task(
        name=name,
        description=(
            f"order-{ORDER} Markov chain over {VOCAB} tokens from a random n-gram MLP teacher; "
            f"a fresh n-gram MLP ({DIM}-d embeddings, {HIDDEN} hidden) learns it, batch "
            f"{s.training.batch_size} x {SEQ_TOKENS - 1} tokens, {steps} steps, eval every "
            f"{s.training.eval_every} steps on {VALID_SEQUENCES} sequences; "
            f"floor = the chain's NLL of the validation tokens = {floor:.4f} nats"
        ),
        base_lr=SYNTHETIC_BASE_LR,
        base_lr_note=SYNTHETIC_BASE_NOTE,
        metric="val loss - floor",
        settings=s,
        floor=floor,
        loader=SyntheticLoader(bundle),
    )


#: Tuned the same way as the others (the warmup+cosine sweep), never used to tune the S-SCU.
COMPLETIONS_BASE_LR = 1e-3
COMPLETIONS_BASE_NOTE = "the lowest of the warmup+cosine sweep below"


def completions_task(steps: int) -> Task:
    from bench.controller.completions import MODEL_DIMS, NOTATION, prepare
    from bench.controller.lora_tasks import valid_rows

    folder = prepare(log=lambda text: print(text, flush=True))
    s = load_preset("demo").replace(
        {
            "name": "completions",
            "model.path": str(folder / "model"),
            "data.path": str(folder / "data"),
            "data.max_seq_length": 64,
            "data.mask_prompt": True,
            "lora.rank": 4,
            "lora.alpha": 8,
            "training.batch_size": 8,
            "training.max_steps": steps,
            "training.eval_every": 25,
            "training.eval_batches": -1,
            "training.save_every": 50,
            "training.warmup_steps": 10,
            "training.samples": 0,
        }
    )
    d = MODEL_DIMS
    return Task(
        name="completions",
        description=(
            f"never used while tuning the S-SCU: LoRA r{s.lora.rank} on a Llama-architecture "
            f"base ({d['num_hidden_layers']} layers of width {d['hidden_size']}, "
            f"{d['num_attention_heads']} full attention heads, its own tokenizer; "
            "pre-trained by the bench on the facts' prose) with completions-format rows in a "
            f"notation it never saw (`{NOTATION['capital'][0].format(x='France')}` -> "
            "` Paris`), loss on the completion only; "
            f"batch {s.training.batch_size}, {steps} steps, eval every "
            f"{s.training.eval_every} steps on the whole validation split "
            f"({valid_rows(folder / 'data')} rows, facts the training rows never mention)"
        ),
        base_lr=COMPLETIONS_BASE_LR,
        base_lr_note=COMPLETIONS_BASE_NOTE,
        metric="val loss",
        settings=s,
    )


# --- the LoRA tasks on the bench's own bases (lora_tasks.py, bases.py) -----------------------

#: Not yet chosen by ``--sweep``: the bench's usual LoRA LR until the sweep is run, as it
#: must be before the full benchmark (the sweep runs warmup+cosine only, never the S-SCU).
PROVISIONAL_LR = 1e-3
PROVISIONAL_NOTE = "provisional: not yet chosen by the sweep"
#: Chosen by ``--sweep`` (warmup+cosine, seed 0, the grid 0.1x-10x of 1e-3).
SWEPT_NOTE = "the lowest of the warmup+cosine sweep (seed 0)"


@dataclass(frozen=True)
class LoraSpec:
    """What one LoRA task sets over the demo preset, and how the report describes it."""

    name: str
    split: str
    base: str  # "@demo" | "llama-facts" | a name in bases.BASES
    format: str
    what: str  # the task, in a few words
    distance: str  # how far the base is from it
    settings: dict[str, Any]
    base_lr: float = PROVISIONAL_LR
    base_lr_note: str = PROVISIONAL_NOTE


LORA_SPECS = {
    spec.name: spec
    for spec in (
        LoraSpec(
            "json",
            "tuning",
            "gemma-docs",
            "chat, loss on the answer",
            "records said in words, written as JSON",
            "far (a prose base, barely any JSON)",
            {
                "data.max_seq_length": 192,
                "data.mask_prompt": True,
                "lora.rank": 8,
                "lora.alpha": 16,
                "training.batch_size": 4,
                "training.eval_every": 50,
            },
            2e-3,
            SWEPT_NOTE,
        ),
        LoraSpec(
            "sort-text",
            "tuning",
            "phi3-code",
            "text",
            "`sort: 7 3 9 1 -> 1 3 7 9`, many short rows",
            "far (a code base)",
            {
                "data.max_seq_length": 48,
                "lora.rank": 4,
                "lora.alpha": 8,
                "training.batch_size": 32,
                "training.eval_every": 25,
            },
            2e-3,
            SWEPT_NOTE,
        ),
        LoraSpec(
            "atlas-text",
            "tuning",
            "@demo",
            "text",
            "the base's own kinds of prose, about countries and capitals it never read",
            "mid (its own kinds of sentences, about countries it never read)",
            {
                "data.max_seq_length": 128,
                "lora.rank": 8,
                "lora.alpha": 16,
                "training.batch_size": 2,
                "training.eval_every": 25,
            },
            2e-3,
            SWEPT_NOTE,
        ),
        LoraSpec(
            "arith-chat",
            "test",
            "@demo",
            "chat, loss on the answer",
            "three-digit sums and differences asked in chat",
            "mid (the base knows sums up to 15, in prose)",
            {
                "data.max_seq_length": 48,
                "data.mask_prompt": True,
                "lora.rank": 8,
                "lora.alpha": 16,
                "training.batch_size": 16,
                "training.eval_every": 25,
            },
            1e-3,
            SWEPT_NOTE,
        ),
        LoraSpec(
            "sql",
            "test",
            "llama-facts",
            "completions, loss on all of it",
            "questions about the facts to SQL (`-- What is the capital of X?` -> `SELECT ...`)",
            "far (the base knows the facts, never saw SQL)",
            {
                "data.max_seq_length": 96,
                "data.mask_prompt": False,
                "lora.rank": 8,
                "lora.alpha": 16,
                "training.batch_size": 8,
                "training.eval_every": 25,
            },
            2e-3,
            SWEPT_NOTE,
        ),
        LoraSpec(
            "docs-text",
            "test",
            "gemma-docs",
            "text",
            "docstrings of standard-library modules the base never read; few long rows",
            "near (the base read other modules' docstrings)",
            {
                "data.max_seq_length": 256,
                "lora.rank": 16,
                "lora.alpha": 32,
                "training.batch_size": 2,
                "training.eval_every": 50,
            },
            5e-4,
            SWEPT_NOTE,
        ),
        LoraSpec(
            "code-completions",
            "test",
            "phi3-code",
            "completions, loss on the body",
            "a function's body from its `def` line and docstring, modules the base never read",
            "near (the base read other modules' code)",
            {
                "data.max_seq_length": 192,
                "data.mask_prompt": True,
                "lora.rank": 8,
                "lora.alpha": 16,
                "training.batch_size": 4,
                "training.eval_every": 20,
            },
            1e-3,
            SWEPT_NOTE,
        ),
    )
}


def base_folder(base: str) -> tuple[str, str]:
    """The model path for a base name, and the base's description."""
    if base == "@demo":
        return "@demo", "the embedded demo model (Qwen3, the facts' prose)"
    if base == "llama-facts":
        from bench.controller.completions import MODEL_DIMS, prepare

        d = MODEL_DIMS
        text = (
            f"llama ({d['num_hidden_layers']} layers of width {d['hidden_size']}, the "
            "completions task's base, the facts' prose)"
        )
        return str(prepare(log=lambda m: print(m, flush=True)) / "model"), text
    from bench.controller.bases import BASES, prepare_base

    return str(prepare_base(base, log=lambda m: print(m, flush=True))), BASES[base].describe()


def lora_task(name: str, steps: int) -> Task:
    from bench.controller.lora_tasks import prepare_data, valid_rows

    spec = LORA_SPECS[name]
    model, base_text = base_folder(spec.base)
    data = prepare_data(name, log=lambda m: print(m, flush=True))
    s = load_preset("demo").replace(
        {
            "name": name,
            "model.path": model,
            "data.path": str(data),
            "lora.dropout": 0.0,
            "training.max_steps": steps,
            "training.eval_batches": -1,
            "training.save_every": 100,
            "training.warmup_steps": 10,
            "training.samples": 0,
            **spec.settings,
        }
    )
    t = s.training
    train_rows = sum(1 for line in (data / "train.jsonl").open() if line.strip())
    return Task(
        name=name,
        description=(
            f"{spec.what}; LoRA r{s.lora.rank} on {base_text}; {spec.format}; "
            f"distance: {spec.distance}; {train_rows} training rows of at most "
            f"{s.data.max_seq_length} tokens, batch {t.batch_size}, {steps} steps, eval every "
            f"{t.eval_every} steps on the whole validation split ({valid_rows(data)} rows)"
        ),
        base_lr=spec.base_lr,
        base_lr_note=spec.base_lr_note,
        metric="val loss",
        settings=s,
        split=spec.split,
    )


def _lora(name: str) -> Any:
    return lambda n: lora_task(name, n)


#: name -> (builder, steps, quick steps, split). The n-gram tasks are extra tuning tasks;
#: the split was fixed before any result of the new tasks was seen: a test task never
#: shapes a rule, a threshold or a default of the S-SCU.
TASKS: dict[str, tuple[Any, int, int, str]] = {
    "demo-lora": (demo_task, 150, 100, "tuning"),
    "completions": (completions_task, 150, 100, "tuning"),
    "json": (_lora("json"), 150, 100, "tuning"),
    "sort-text": (_lora("sort-text"), 200, 120, "tuning"),
    "atlas-text": (_lora("atlas-text"), 150, 100, "tuning"),
    "arith-chat": (_lora("arith-chat"), 150, 100, "test"),
    "sql": (_lora("sql"), 150, 100, "test"),
    "docs-text": (_lora("docs-text"), 150, 100, "test"),
    "code-completions": (_lora("code-completions"), 120, 80, "test"),
    "synthetic": (synthetic_task, 300, 200, "tuning"),
    "synthetic-long": (lambda n: synthetic_task(n, "synthetic-long", 50), 1000, 600, "tuning"),
}
#: What runs without ``--tasks``: the LoRA tasks (the n-gram ones on request).
DEFAULT_TASKS = tuple(k for k in TASKS if not k.startswith("synthetic"))
#: ``--smoke``: one tuning and one test task, on two bases of other families.
SMOKE_TASKS = ("sort-text", "sql")


def parse_set(items: Sequence[str]) -> dict[str, Any]:
    """``--set key=value`` (the value read as TOML, else as a string) -> overrides."""
    import tomllib

    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or key.strip() not in all_keys():
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE with a known settings key")
        try:
            value = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = text.strip()
        out[key.strip()] = value
    return out


def make_tasks(
    names: Sequence[str],
    quick: bool,
    steps: dict[str, int | None],
    overrides: dict[str, Any] | None = None,
) -> list[Task]:
    """The named tasks at their steps (``steps`` per task, else full or quick); every
    run of every arm gets ``overrides`` (``--set``) over the task's settings."""
    tasks = []
    for name in names:
        if name not in TASKS:
            raise SystemExit(f"unknown task {name!r} ({', '.join(TASKS)})")
        builder, full, short, split = TASKS[name]
        task = builder(steps.get(name) or (short if quick else full))
        task.split = split
        task.overrides = dict(overrides or {})
        if task.overrides:  # a bad value fails here, before any run
            task.settings = task.settings.replace(task.overrides)
            said = ", ".join(f"{k} = {v}" for k, v in task.overrides.items())
            task.description += f" (over every run: {said})"
        tasks.append(task)
    return tasks
