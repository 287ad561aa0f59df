"""Build the embedded demo: a tiny Qwen3-architecture base model and a chat dataset.

Run ``python -m scu_tui.demo.build`` (about four minutes on two CPU cores).

Everything comes from this file and fixed seeds; nothing is downloaded:

1. A synthetic world of simple facts in three families: capitals of countries,
   opposites of words, and sums of small numbers.
2. A byte-level BPE tokenizer (a few hundred tokens, ChatML special tokens and a
   ChatML chat template) trained with ``tokenizers`` on that text.
3. A ``mlx_lm.models.qwen3`` model, pre-trained with plain next-token cross-entropy
   on *plain prose* about the facts ("The capital of France is Paris.", and quiz
   pages "Q: ...? A: ..."): a base model that knows the facts, but has never seen
   a chat turn or the ChatML tokens.
4. ``data/{train,valid,test}.jsonl``: the same facts asked in *chat* form.
   Splits are made by fact, so valid and test ask about facts that the
   fine-tuning set never mentions (the model only knows them from pre-training).

A LoRA fine-tune on ``train.jsonl`` (rank 8, batch 4, lr 1e-3) takes the validation
loss from about 6.2 to about 0.33 in 100 steps and then answers most held-out test
questions correctly; the same fine-tune of an untrained model stays near 1.7 and
answers none.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

DEMO_DIR = Path(__file__).resolve().parent
OPENBLAS = Path("/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0")
NO_REEXEC_ENV = "SCU_DEMO_NO_REEXEC"  # set it to skip the OpenBLAS restart

ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END]
VOCAB_SIZE = 512

# Words ahead of a letter run keep their leading space, digits split one by one.
PRE_TOKENIZE = r"'(?:s|t|re|ve|m|ll|d)| ?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"

CHAT_TEMPLATE = (
    "{%- for message in messages -%}\n"
    "{%- set content = message['content'] if message['content'] is string else '' -%}\n"
    "{{- '<|im_start|>' ~ message['role'] ~ '\\n' ~ content ~ '<|im_end|>\\n' -}}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "{{- '<|im_start|>assistant\\n' -}}\n"
    "{%- endif -%}\n"
)

MODEL_DIMS: dict[str, Any] = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "max_position_embeddings": 512,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
}


def _pairs(text: str) -> list[tuple[str, str]]:
    """``"a: b; c: d"`` -> ``[("a", "b"), ("c", "d")]``."""
    items = [item.split(":") for item in " ".join(text.split()).split(";") if item.strip()]
    return [(a.strip(), b.strip()) for a, b in items]


CAPITALS = _pairs(
    """
    France: Paris; Germany: Berlin; Italy: Rome; Spain: Madrid; Portugal: Lisbon;
    Greece: Athens; Norway: Oslo; Sweden: Stockholm; Finland: Helsinki; Denmark: Copenhagen;
    Poland: Warsaw; Austria: Vienna; Hungary: Budapest; Ireland: Dublin; Belgium: Brussels;
    the Netherlands: Amsterdam; Switzerland: Bern; Czechia: Prague; Romania: Bucharest;
    Bulgaria: Sofia; Serbia: Belgrade; Croatia: Zagreb; Ukraine: Kyiv; Russia: Moscow;
    Turkey: Ankara; Egypt: Cairo; Kenya: Nairobi; Nigeria: Abuja; Ghana: Accra; Morocco: Rabat;
    Ethiopia: Addis Ababa; Japan: Tokyo; China: Beijing; India: New Delhi; Thailand: Bangkok;
    Vietnam: Hanoi; Indonesia: Jakarta; the Philippines: Manila; Iran: Tehran; Iraq: Baghdad;
    Saudi Arabia: Riyadh; Pakistan: Islamabad; Nepal: Kathmandu; Mongolia: Ulaanbaatar;
    South Korea: Seoul; Australia: Canberra; New Zealand: Wellington; Canada: Ottawa;
    Mexico: Mexico City; Cuba: Havana; Peru: Lima; Chile: Santiago; Argentina: Buenos Aires;
    Colombia: Bogota; Venezuela: Caracas; Brazil: Brasilia; Ecuador: Quito; Uruguay: Montevideo;
    Iceland: Reykjavik; Estonia: Tallinn; Latvia: Riga; Lithuania: Vilnius;
    Slovakia: Bratislava; Slovenia: Ljubljana; Albania: Tirana; Jordan: Amman; Lebanon: Beirut;
    Syria: Damascus; Qatar: Doha; Afghanistan: Kabul; Malaysia: Kuala Lumpur; Bangladesh: Dhaka;
    Tunisia: Tunis; Algeria: Algiers; Senegal: Dakar; Uganda: Kampala; Zimbabwe: Harare;
    Zambia: Lusaka; Angola: Luanda; Sudan: Khartoum; Libya: Tripoli; Jamaica: Kingston;
    Paraguay: Asuncion; Cyprus: Nicosia; Malta: Valletta; Georgia: Tbilisi; Armenia: Yerevan;
    Azerbaijan: Baku; Kazakhstan: Astana; Uzbekistan: Tashkent; Laos: Vientiane;
    Cambodia: Phnom Penh; the United Kingdom: London; the United States: Washington;
    """
)

OPPOSITES = _pairs(
    """
    hot: cold; big: small; tall: short; fast: slow; happy: sad; light: dark; open: closed;
    early: late; full: empty; hard: soft; rich: poor; strong: weak; wet: dry; loud: quiet;
    thick: thin; clean: dirty; good: bad; high: low; up: down; in: out; left: right;
    top: bottom; day: night; black: white; yes: no; win: lose; push: pull; buy: sell;
    give: take; begin: end; first: last; true: false; love: hate; alive: dead; inside: outside;
    north: south; east: west; near: far; new: old; always: never; before: after; above: below;
    friend: enemy; question: answer; rise: fall; cheap: expensive; safe: dangerous;
    easy: difficult; sweet: sour; wide: narrow; deep: shallow; smooth: rough; asleep: awake;
    arrive: leave; remember: forget; increase: decrease; maximum: minimum; positive: negative;
    public: private; simple: complex; summer: winter; ancient: modern; polite: rude;
    entrance: exit; victory: defeat; morning: evening; hello: goodbye;
    """
)

MAX_ADDEND = 15

# Plain prose for pre-training: the base model learns the facts from these.
PROSE = {
    "capital": [
        "The capital of {x} is {y}.",
        "{y} is the capital of {x}.",
        "The capital city of {x} is {y}.",
        "{y} is the capital city of {x}.",
        "{X} has its capital in {y}.",
        "The government of {x} sits in {y}, the capital.",
    ],
    "opposite": [
        "The opposite of {x} is {y}.",
        "The opposite of {x} is {y}, and the opposite of {y} is {x}.",
        "{X} is the opposite of {y}.",
        "{X} and {y} are opposites.",
    ],
    "sum": [
        "{x} plus {y} is {z}.",
        "{x} + {y} = {z}.",
        "The sum of {x} and {y} is {z}.",
        "Adding {x} and {y} gives {z}.",
        "If you add {x} and {y}, you get {z}.",
    ],
}

# Chat turns for fine-tuning: the same facts, asked as questions.
QUESTIONS = {
    "capital": [
        "What is the capital of {x}?",
        "What's the capital city of {x}?",
        "Which city is the capital of {x}?",
        "Name the capital of {x}.",
        "Tell me the capital of {x}.",
    ],
    "opposite": [
        "What is the opposite of {x}?",
        "What is the opposite of the word {x}?",
        "Give me the opposite of {x}.",
        "Which word is the opposite of {x}?",
        "Name the opposite of {x}.",
    ],
    "sum": [
        "What is {x} plus {y}?",
        "What is {x} + {y}?",
        "How much is {x} plus {y}?",
        "Add {x} and {y}.",
        "What is the sum of {x} and {y}?",
    ],
}
# Extra wordings for quiz-style prose ("Q: ... A: ..."), which also uses the chat questions.
QUIZ = {
    "capital": ["Capital of {x}?", "Where is the capital of {x}?"],
    "opposite": ["Opposite of {x}?", "What word means the opposite of {x}?"],
    "sum": ["{x} + {y} = ?", "What do {x} and {y} add up to?"],
}
PARAGRAPH_SHARE, QUIZ_SHARE = 0.3, 0.25
ANSWERS = {
    "capital": "The capital of {x} is {y}.",
    "opposite": "The opposite of {x} is {y}.",
    "sum": "{x} plus {y} is {z}.",
}
SYSTEM_PROMPTS = ["You are a helpful assistant.", "Answer in one short sentence."]


@dataclass(frozen=True)
class Fact:
    """One fact: ``kind`` selects the templates, ``x``/``y``/``z`` fill them."""

    kind: str
    x: str
    y: str
    z: str = ""

    def fill(self, template: str) -> str:
        """Render a template with this fact's fields."""
        big_x = self.x[:1].upper() + self.x[1:]
        return template.format(x=self.x, y=self.y, z=self.z, X=big_x)


def all_facts() -> list[Fact]:
    """Every fact of the synthetic world, in a fixed order."""
    facts = [Fact("capital", country, city) for country, city in CAPITALS]
    for word, opposite in OPPOSITES:
        facts += [Fact("opposite", word, opposite), Fact("opposite", opposite, word)]
    for a in range(MAX_ADDEND + 1):
        for b in range(MAX_ADDEND + 1):
            facts.append(Fact("sum", str(a), str(b), str(a + b)))
    return facts


# --- data -----------------------------------------------------------------------------------


def split_facts(facts: list[Fact], seed: int) -> dict[str, list[Fact]]:
    """Split by fact (stratified by kind): about 80% train, 12% valid, 8% test."""
    rng = random.Random(seed)
    splits: dict[str, list[Fact]] = {"train": [], "valid": [], "test": []}
    for kind in PROSE:
        group = [f for f in facts if f.kind == kind]
        rng.shuffle(group)
        n_valid, n_test = round(0.12 * len(group)), round(0.08 * len(group))
        splits["valid"] += group[:n_valid]
        splits["test"] += group[n_valid : n_valid + n_test]
        splits["train"] += group[n_valid + n_test :]
    for rows in splits.values():
        rng.shuffle(rows)
    return splits


def chat_rows(facts: list[Fact], per_fact: int, seed: int) -> list[dict[str, Any]]:
    """``per_fact`` differently worded chat examples for each fact."""
    rng = random.Random(seed)
    rows = []
    for fact in facts:
        for question in rng.sample(QUESTIONS[fact.kind], per_fact):
            messages = [
                {"role": "user", "content": fact.fill(question)},
                {"role": "assistant", "content": fact.fill(ANSWERS[fact.kind])},
            ]
            if rng.random() < 0.15:
                messages.insert(0, {"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
            rows.append({"messages": messages})
    rng.shuffle(rows)
    return rows


def make_data(facts: list[Fact], seed: int) -> dict[str, list[dict[str, Any]]]:
    """The chat rows of each split, three wordings per fact."""
    splits = split_facts(facts, seed)
    return {name: chat_rows(split, 3, seed + i) for i, (name, split) in enumerate(splits.items())}


def write_data(out: Path, data: dict[str, list[dict[str, Any]]]) -> None:
    """Write ``train/valid/test.jsonl``, one JSON object per line."""
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in data.items():
        lines = [json.dumps(row, ensure_ascii=False) + "\n" for row in rows]
        (out / f"{name}.jsonl").write_text("".join(lines), encoding="utf-8")


def prose_documents(facts: list[Fact], count: int, seed: int) -> list[str]:
    """Short plain-text documents: lists of facts, paragraphs about one fact, quizzes."""
    rng = random.Random(seed)
    by_kind = {kind: [f for f in facts if f.kind == kind] for kind in PROSE}
    kinds = list(PROSE)
    docs = []
    for _ in range(count):
        main = rng.choice(kinds)
        style = rng.random()
        if style < PARAGRAPH_SHARE:  # one fact said several ways: teaches repeating names
            fact = rng.choice(by_kind[main])
            sentences = [fact.fill(t) for t in rng.sample(PROSE[main], rng.randint(2, 3))]
        elif style < PARAGRAPH_SHARE + QUIZ_SHARE:  # question and answer, in prose
            pairs = []
            for fact in rng.sample(by_kind[main], rng.randint(2, 4)):
                question = fact.fill(rng.choice(QUESTIONS[main] + QUIZ[main]))
                pairs.append(f"Q: {question}\nA: {fact.fill(ANSWERS[main])}")
            docs.append("\n\n".join(pairs))
            continue
        else:
            sentences = []
            for _ in range(rng.randint(3, 8)):
                kind = main if rng.random() < 0.8 else rng.choice(kinds)
                fact = rng.choice(by_kind[kind])
                sentences.append(fact.fill(rng.choice(PROSE[kind])))
        docs.append(("\n" if rng.random() < 0.3 else " ").join(sentences).strip())
    return docs


# --- tokenizer ------------------------------------------------------------------------------


def tokenizer_corpus(docs: list[str], rows: list[dict[str, Any]]) -> list[str]:
    """Prose documents plus chat turns (role names and contents), as the BPE training text."""
    texts = list(docs)
    for row in rows:
        texts += [f"{m['role']}\n{m['content']}" for m in row["messages"]]
    return texts


def train_tokenizer(texts: list[str]) -> Any:
    """A byte-level BPE (every byte has a token, so any text can be encoded)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from tokenizers.trainers import BpeTrainer

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRE_TOKENIZE), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def save_tokenizer(tok: Any, out: Path) -> Any:
    """Save as a ``PreTrainedTokenizerFast`` with the chat template in tokenizer_config.json."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok,
        bos_token=None,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        additional_special_tokens=[IM_START, IM_END],
        model_max_length=MODEL_DIMS["max_position_embeddings"],
        clean_up_tokenization_spaces=False,
    )
    fast.save_pretrained(str(out))
    # Rewrite tokenizer_config.json in a form that transformers 4 and 5 both read, with the
    # chat template inside it (transformers 5 would put it in chat_template.jinja).
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": IM_END,
        "pad_token": ENDOFTEXT,
        "unk_token": None,
        "additional_special_tokens": [IM_START, IM_END],
        "model_max_length": MODEL_DIMS["max_position_embeddings"],
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "chat_template": CHAT_TEMPLATE,
    }
    text = json.dumps(config, indent=2, ensure_ascii=False) + "\n"
    (out / "tokenizer_config.json").write_text(text, encoding="utf-8")
    for stale in ("chat_template.jinja", "special_tokens_map.json"):
        (out / stale).unlink(missing_ok=True)
    return fast


# --- model ----------------------------------------------------------------------------------


def model_config(vocab_size: int, ids: dict[str, int]) -> dict[str, Any]:
    """A Hugging Face style ``config.json`` for Qwen3."""
    return {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "vocab_size": vocab_size,
        **MODEL_DIMS,
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "rope_scaling": None,
        "tie_word_embeddings": True,
        "use_sliding_window": False,
        "sliding_window": None,
        "max_window_layers": MODEL_DIMS["num_hidden_layers"],
        "initializer_range": 0.02,
        "use_cache": True,
        "bos_token_id": ids[ENDOFTEXT],
        "eos_token_id": [ids[IM_END], ids[ENDOFTEXT]],
        "pad_token_id": ids[ENDOFTEXT],
        "torch_dtype": "float32",
    }


def token_stream(docs: list[str], tok: Any, eot: int) -> np.ndarray:
    """All documents encoded and joined, each followed by ``<|endoftext|>``."""
    ids: list[int] = []
    for enc in tok.encode_batch(docs, add_special_tokens=False):
        ids += enc.ids
        ids.append(eot)
    return np.array(ids, dtype=np.int32)


def batches(stream: np.ndarray, batch: int, length: int, seed: int) -> Iterator[np.ndarray]:
    """Random windows of ``length + 1`` tokens from the stream, forever."""
    rng = np.random.default_rng(seed)
    while True:
        starts = rng.integers(0, len(stream) - length - 1, size=batch)
        yield np.stack([stream[s : s + length + 1] for s in starts])


def pretrain(
    config: dict[str, Any], stream: np.ndarray, steps: int, seed: int, log_every: int = 50
) -> Any:
    """Create a model of the config's mlx-lm architecture (Qwen3 for the demo) and train it
    with next-token cross-entropy (AdamW)."""
    import importlib

    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim

    arch = importlib.import_module(f"mlx_lm.models.{config['model_type']}")
    mx.random.seed(seed)
    model = arch.Model(arch.ModelArgs.from_dict(config))
    mx.eval(model.parameters())

    peak, warmup = 3e-3, min(100, max(1, steps // 10))
    schedule = optim.join_schedules(
        [
            optim.linear_schedule(peak / warmup, peak, warmup),
            optim.cosine_decay(peak, max(1, steps - warmup), end=peak / 20),
        ],
        [warmup],
    )
    optimizer = optim.AdamW(learning_rate=schedule, weight_decay=0.01)

    def loss_fn(model: nn.Module, x: mx.array, y: mx.array) -> mx.array:
        return nn.losses.cross_entropy(model(x), y, reduction="mean")

    loss_and_grad = nn.value_and_grad(model, loss_fn)
    state = [model.state, optimizer.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def step(x: mx.array, y: mx.array) -> mx.array:
        loss, grads = loss_and_grad(model, x, y)
        grads, _ = optim.clip_grad_norm(grads, 1.0)
        optimizer.update(model, grads)
        return loss

    start, running = time.perf_counter(), 0.0
    for i, window in zip(range(1, steps + 1), batches(stream, 32, 64, seed), strict=False):
        arr = mx.array(window)
        loss = step(arr[:, :-1], arr[:, 1:])
        mx.eval(loss, state)
        running += loss.item()
        if i % log_every == 0 or i == steps:
            n = log_every if i % log_every == 0 else i % log_every
            elapsed = time.perf_counter() - start
            print(f"  step {i:5d}/{steps}  loss {running / n:.3f}  {elapsed:6.1f}s", flush=True)
            running = 0.0
    return model


def save_model(model: Any, config: dict[str, Any], out: Path) -> None:
    """``model.safetensors`` (float32, Hugging Face names), config and generation config."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    out.mkdir(parents=True, exist_ok=True)
    weights = dict(sorted(tree_flatten(model.parameters())))
    weights = {k: v.astype(mx.float32) for k, v in weights.items()}
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    generation = {
        "bos_token_id": config["bos_token_id"],
        "eos_token_id": config["eos_token_id"],
        "pad_token_id": config["pad_token_id"],
        "do_sample": False,
        "max_new_tokens": 32,
    }
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n", "utf-8")


def quick_check(model_dir: Path) -> None:
    """Load the result the ordinary way and print a few greedy completions."""
    from mlx_lm import generate, load

    model, tokenizer = load(str(model_dir))
    for prompt in ["The capital of France is", "The opposite of hot is", "7 plus 5 is"]:
        text = generate(model, tokenizer, prompt=prompt, max_tokens=8, verbose=False)
        print(f"  {prompt!r} -> {text!r}")


# --- entry point ----------------------------------------------------------------------------


def _reexec_with_openblas() -> None:
    """MLX's CPU matmuls are ~8x faster with OpenBLAS preloaded; restart with it if present."""
    if os.environ.get(NO_REEXEC_ENV) or not OPENBLAS.exists():
        return
    if str(OPENBLAS) in os.environ.get("LD_PRELOAD", ""):
        return
    env = dict(os.environ, LD_PRELOAD=f"{OPENBLAS} {os.environ.get('LD_PRELOAD', '')}".strip())
    env[NO_REEXEC_ENV] = "1"
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def main(argv: list[str] | None = None) -> int:
    """Build the tokenizer, model and data into ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEMO_DIR, help="demo folder to write")
    parser.add_argument("--pretrain-steps", type=int, default=1500, help="pre-training steps")
    parser.add_argument("--seed", type=int, default=0, help="seed for data and model")
    args = parser.parse_args(argv)
    if argv is None:
        _reexec_with_openblas()

    began = time.perf_counter()
    model_dir, data_dir = args.out / "model", args.out / "data"
    model_dir.mkdir(parents=True, exist_ok=True)
    facts = all_facts()

    data = make_data(facts, args.seed)
    write_data(data_dir, data)
    counts = {name: len(rows) for name, rows in data.items()}
    print(f"data: {counts} chat rows from {len(facts)} facts -> {data_dir}")

    docs = prose_documents(facts, 30_000, args.seed)
    tok = train_tokenizer(tokenizer_corpus(docs[:5_000], data["train"]))
    fast = save_tokenizer(tok, model_dir)
    ids = {t: fast.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    print(f"tokenizer: {len(fast)} tokens, specials {ids}")

    config = model_config(len(fast), ids)
    stream = token_stream(docs, tok, ids[ENDOFTEXT])
    print(f"pre-training on {len(stream):,} tokens of prose for {args.pretrain_steps} steps")
    model = pretrain(config, stream, args.pretrain_steps, args.seed)
    save_model(model, config, model_dir)
    quick_check(model_dir)
    size = sum(p.stat().st_size for d in (model_dir, data_dir) for p in d.rglob("*"))
    print(f"done in {time.perf_counter() - began:.0f}s; {args.out} holds {size / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
