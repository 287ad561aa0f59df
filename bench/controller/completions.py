"""The ``completions`` task: prompt/completion data on a base of another architecture and
shape. Its results were read in the S-SCU's v2 benchmark, so it is a tuning task now; its
Llama base also serves the ``sql`` test task.

It is built offline from the demo's world of facts, but differs from the demo in everything
the controller could have fitted:

- the base is a Llama-architecture model (full multi-head attention, 3 layers of width 96,
  its own byte-level BPE) pre-trained here on the facts' prose, not the demo's Qwen3;
- the data is in completions format, in a terse notation the base never saw
  (``capital(France) =`` -> `` Paris``), with the loss on the completion only
  (``data.mask_prompt``); validation asks about facts the fine-tuning set never mentions;
- LoRA rank 4 on a batch of 8 short rows.

The base is built once (about a minute on two cores) into a cache folder that is keyed by
everything that shapes it, and then loaded by the product's own mlx-lm path.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

from bench.controller.bases import cache_root
from scu_tui.demo import build

#: Everything that shapes the base; a change here builds a new cache entry.
MODEL_DIMS: dict[str, Any] = {
    "hidden_size": 96,
    "intermediate_size": 256,
    "num_hidden_layers": 3,
    "num_attention_heads": 3,
    "num_key_value_heads": 3,
    "head_dim": 32,
    "max_position_embeddings": 256,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
}
PRETRAIN_STEPS = 800
PROSE_DOCS = 20_000
SEED = 7
ROWS_PER_FACT = 2
NOTATION = {
    "capital": ("capital({x}) =", " {y}"),
    "opposite": ("opposite({x}) =", " {y}"),
    "sum": ("{x} + {y} =", " {z}"),
}
VERSION = 1


def _key() -> str:
    shape = {"dims": MODEL_DIMS, "steps": PRETRAIN_STEPS, "docs": PROSE_DOCS, "seed": SEED}
    shape |= {"notation": NOTATION, "rows": ROWS_PER_FACT, "version": VERSION}
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:12]


def rows(facts: list[build.Fact], seed: int) -> list[dict[str, str]]:
    """Completion rows in the terse notation; some prompts carry a short instruction so
    the rows are not all alike."""
    rng = random.Random(seed)
    out = []
    for fact in facts:
        prompt, completion = NOTATION[fact.kind]
        for i in range(ROWS_PER_FACT):
            text = fact.fill(prompt)
            if i and rng.random() < 0.5:
                text = "Complete: " + text
            out.append({"prompt": text, "completion": fact.fill(completion)})
    rng.shuffle(out)
    return out


def _config(vocab_size: int, ids: dict[str, int]) -> dict[str, Any]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab_size,
        **MODEL_DIMS,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": True,
        "bos_token_id": ids[build.ENDOFTEXT],
        "eos_token_id": [ids[build.IM_END], ids[build.ENDOFTEXT]],
        "pad_token_id": ids[build.ENDOFTEXT],
        "torch_dtype": "float32",
    }


def _build(out: Path, log: Any) -> None:
    facts = build.all_facts()
    splits = build.split_facts(facts, SEED)
    data = {name: rows(split, SEED + i) for i, (name, split) in enumerate(splits.items())}
    build.write_data(out / "data", data)
    docs = build.prose_documents(facts, PROSE_DOCS, SEED)
    texts = docs[:5_000] + [r["prompt"] + r["completion"] for r in data["train"]]
    tok = build.train_tokenizer(texts)
    fast = build.save_tokenizer(tok, out / "model")
    ids = {t: fast.convert_tokens_to_ids(t) for t in build.SPECIAL_TOKENS}
    config = _config(len(fast), ids)
    stream = build.token_stream(docs, tok, ids[build.ENDOFTEXT])
    log(f"completions task: pre-training a {MODEL_DIMS['num_hidden_layers']}-layer Llama base")
    model = build.pretrain(config, stream, PRETRAIN_STEPS, SEED, log_every=200)
    build.save_model(model, config, out / "model")


def prepare(log: Any = print) -> Path:
    """The task's folder (``model/`` and ``data/``), built on first use."""
    root = cache_root()
    final = root / f"completions-{_key()}"
    if (final / "model" / "model.safetensors").exists():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".completions-", dir=root))
    try:
        _build(tmp, log)
        try:
            tmp.rename(final)
        except OSError:  # another process built it first
            if not (final / "model" / "model.safetensors").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
