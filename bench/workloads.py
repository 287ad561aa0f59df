"""Models, configs and data that the benchmarks and the tests both measure, written once.

A script run from ``bench/`` imports this as ``workloads``; the tests import it as
``bench.workloads`` (the repository root is on their path, see pyproject.toml).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

#: config.json of Qwen/Qwen3-4B-MLX-4bit (as on the hub), the reference workload's model:
#: the keys that shape the model and its memory (not the hub's token ids, which a built
#: stand-in of this shape, with its own tokenizer, must not claim).
QWEN3_4B_MLX_4BIT: dict[str, Any] = {
    "architectures": ["Qwen3ForCausalLM"],
    "attention_bias": False,
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 2560,
    "intermediate_size": 9728,
    "max_position_embeddings": 40960,
    "max_window_layers": 36,
    "model_type": "qwen3",
    "num_attention_heads": 32,
    "num_hidden_layers": 36,
    "num_key_value_heads": 8,
    "quantization": {"group_size": 64, "bits": 4},
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "vocab_size": 151936,
}

#: The files a model folder needs besides its weights, copied from the demo.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json")


def build_qwen3_25m(out: Path) -> int:
    """A ~25M-parameter Qwen3 (random init, float32) with the demo's tokenizer, written to
    ``out``; its parameter count. Big enough that a step is not all overhead, small enough
    for a CPU."""
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
    for name in TOKENIZER_FILES:
        shutil.copy(MODEL_DIR / name, out / name)
    return sum(v.size for v in weights.values())


def long_text_data(out: Path, rows: int = 48) -> Path:
    """Text rows far longer than a max_seq_length of 64-96 tokens, so every batch has one
    width: the demo's answers, twelve to a row."""
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


def config_only(model: Path, out: Path) -> Path:
    """A copy of a model folder without its weights: what a user has before the download."""
    out.mkdir(parents=True)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        if (model / name).is_file():
            shutil.copy(model / name, out / name)
    return out
