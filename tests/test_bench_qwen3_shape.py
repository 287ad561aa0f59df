"""The builder of Qwen3-4B's shape (bench/qwen3_shape.py), on a small variant of it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import qwen3_shape

SMALL = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "vocab_size": 512,
}


def test_the_full_shape_is_qwen3_4b_mlx_4bit() -> None:
    config = qwen3_shape.shape_config(36)
    assert (config["hidden_size"], config["intermediate_size"], config["vocab_size"]) == (
        2560, 9728, 151936,
    )  # fmt: skip
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]) == (
        32, 8, 128,
    )  # fmt: skip
    assert config["tie_word_embeddings"] is True and config["rope_theta"] == 1000000
    assert config["quantization"] == {"group_size": 64, "bits": 4}
    assert qwen3_shape.shape_config(2)["num_hidden_layers"] == 2
    assert qwen3_shape.default_folder(36).name == "qwen3-4b-shape"
    assert qwen3_shape.default_folder(2).name == "qwen3-4b-shape-L2"


def test_a_small_variant_builds_in_shards_loads_quantized_and_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlx.core as mx
    from mlx.nn import QuantizedEmbedding, QuantizedLinear

    from scu_tui.training.model import load_model

    # small slices and shards, so that the build takes the paths the full model takes
    monkeypatch.setattr(qwen3_shape, "SLICE_BYTES", 4096)
    monkeypatch.setattr(qwen3_shape, "SHARD_BYTES", 20_000)
    config = qwen3_shape.shape_config(2, **SMALL)
    folder = qwen3_shape.build(tmp_path / "model", config, lengths=[8, 24], rows=4)

    written = json.loads((folder / "config.json").read_text())
    assert written["num_hidden_layers"] == 2 and written["quantization"] == {
        "group_size": 64, "bits": 4,
    }  # fmt: skip
    shards = sorted(folder.glob("model-*.safetensors"))
    assert len(shards) > 1 and not (tmp_path / "model.partial").exists()
    index = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    stored = {name for shard in shards for name in mx.load(str(shard))}
    assert stored == set(index) and "model.embed_tokens.scales" in stored
    assert not any(name.startswith("lm_head") for name in stored)  # tied embeddings

    model, tokenizer = load_model(str(folder))  # as a run loads it: mlx_lm.load
    layers = model.model.layers
    assert len(layers) == 2
    for layer in layers:
        for linear in (layer.self_attn.q_proj, layer.self_attn.o_proj, layer.mlp.down_proj):
            assert isinstance(linear, QuantizedLinear)
            assert (linear.bits, linear.group_size) == (4, 64)
    assert isinstance(model.model.embed_tokens, QuantizedEmbedding)
    logits = model(mx.array([[1, 2, 3, 4]]))
    assert logits.shape == (1, 4, 512) and bool(mx.isfinite(logits).all())

    for length in (8, 24):  # rows of exactly the chosen token count, end-of-text included
        for line in (
            (folder / "data" / f"len-{length:04d}" / "train.jsonl").read_text().splitlines()
        ):
            ids = tokenizer.encode(json.loads(line)["text"])
            assert len(ids) + 1 == length and min(ids) > 0 and max(ids) < 512
    assert tokenizer.eos_token_id == 0

    before = shards[0].stat().st_mtime_ns  # a complete folder is reused, not rebuilt
    qwen3_shape.build(tmp_path / "model", config, lengths=[8, 24, 40], rows=4)
    assert shards[0].stat().st_mtime_ns == before
    assert (folder / "data" / "len-0040" / "valid.jsonl").is_file()  # ... with the new length


def test_a_float32_variant_keeps_the_shape_and_computes_in_float32(tmp_path: Path) -> None:
    import mlx.core as mx

    from scu_tui.training.model import load_model

    assert qwen3_shape.default_folder(2, "float32").name == "qwen3-4b-shape-L2-float32"
    config = qwen3_shape.shape_config(1, torch_dtype="float32", **SMALL)
    folder = qwen3_shape.build(tmp_path / "f32", config, lengths=[8], rows=2)
    stored = {
        k: v for shard in folder.glob("model-*.safetensors") for k, v in mx.load(str(shard)).items()
    }
    assert stored["model.embed_tokens.scales"].dtype == mx.float32
    assert stored["model.layers.0.mlp.up_proj.weight"].dtype == mx.uint32  # still 4-bit
    model, _ = load_model(str(folder))
    assert model(mx.array([[1, 2, 3]])).dtype == mx.float32


#: Peaks of one training step of Qwen3-4B's width at 36 blocks, GB, extrapolated from 2, 4
#: and 8 measured blocks (float32 activations, 4-bit weights; docs/benchmarks.md, "The
#: reference workload, measured by block"): (tokens per row, grad_checkpoint) -> GB.
MEASURED_4B = {(64, False): 4.52, (256, False): 8.68, (64, True): 3.82, (256, True): 3.94}


@pytest.mark.parametrize(("length", "checkpoint"), sorted(MEASURED_4B))
def test_the_config_only_estimate_is_within_15_percent_above_the_measured_peak(
    length: int, checkpoint: bool
) -> None:
    """`scu-tui check` from config.json alone, for the measured model at batch 1: never
    under the measured peak, at most 15 % over it."""
    import reference_memory

    point = reference_memory.Point("scu", 36, 1, length, checkpoint, "float32")
    predicted = reference_memory.config_estimate(point.folder, point, 36)
    ratio = predicted / MEASURED_4B[(length, checkpoint)]
    assert 1.0 <= ratio <= 1.15, f"{predicted:.2f} GB predicted: {ratio:.3f} x the measured"
