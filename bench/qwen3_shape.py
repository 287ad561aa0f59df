"""Build a model of Qwen3-4B's exact shape, quantized as its MLX 4-bit release, offline.

The reference workload is LoRA on Qwen3-4B-MLX-4bit. This builds its shape with random
weights: the public config (36 blocks, hidden 2560, 32 query and 8 key-value heads of
128, intermediate 9728, vocabulary 151,936, tied embeddings, RoPE theta 1e6), every
linear layer and the embedding quantized as the release is (4 bits, group size 64,
``"quantization"`` in ``config.json``), so that mlx-lm loads it as it loads the real one.
It is the workload's memory and compute, minus the knowledge.

Layer by layer, the build never holds the float model: each matrix is drawn in bfloat16
a slice of rows at a time, quantized, and only the quantized arrays are kept, until a
shard of about 1 GB is written with ``mx.save_safetensors``. ``--layers N`` builds the
same width with N blocks (the 2, 4 and 8-block models that per-block memory is measured
on). The folder goes outside the repository, by default
``~/.cache/scu-tui-bench/qwen3-4b-shape[-LN]/`` (``$XDG_CACHE_HOME`` is honoured), written
to a temporary folder and renamed when complete, and reused by the next build.

No Qwen3 tokenizer is available offline, and none is needed to measure memory and time:
what matters is how many tokens a row has. The folder holds a stand-in tokenizer, a
word-level vocabulary of the model's size (``<|endoftext|>`` is id 0, ``w1`` ... ``wN``
the others, one token per space-separated word), good for token counts only; ``data/``
holds rows built directly as token ids, ``data/len-0128/{train,valid,test}.jsonl`` in the
``text`` format, whose every row is exactly 128 tokens once mlx-lm appends the
end-of-text token.

    python bench/qwen3_shape.py                      # the full 36 blocks (about 2.3 GB)
    python bench/qwen3_shape.py --layers 2 --lengths 64,128,256
    scu-tui --preset qwen3-4b-mlx-4bit --model DIR --data DIR/data/len-0128 --headless
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from workloads import QWEN3_4B_MLX_4BIT  # bench/ is on the path of a script run from it

import scu_tui  # noqa: F401  (loads the system OpenBLAS before mlx, as the app does)

SHARD_BYTES = 1 << 30  # quantized bytes per safetensors file
SLICE_BYTES = 64 << 20  # float bytes drawn at once (the build's working set)
INIT_STD = 0.02  # Qwen3's initializer_range
EOS = "<|endoftext|>"


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "scu-tui-bench"


def default_folder(layers: int, dtype: str = "bfloat16") -> Path:
    full = QWEN3_4B_MLX_4BIT["num_hidden_layers"]
    name = "qwen3-4b-shape" if layers == full else f"qwen3-4b-shape-L{layers}"
    return cache_root() / (name if dtype == "bfloat16" else f"{name}-{dtype}")


def shape_config(layers: int, **overrides: Any) -> dict[str, Any]:
    """Qwen3-4B-MLX-4bit's ``config.json`` with ``layers`` blocks (and, for a small test
    variant, other sizes)."""
    config = {**QWEN3_4B_MLX_4BIT, **overrides}
    config["num_hidden_layers"] = config["max_window_layers"] = layers
    return config


def _slices(rows: int, columns: int) -> Iterator[tuple[int, int]]:
    step = max(1, SLICE_BYTES // (2 * columns))
    for start in range(0, rows, step):
        yield start, min(rows, start + step)


def quantized_random(
    shape: tuple[int, int], group_size: int, bits: int, key: Any, dtype: Any = None
) -> tuple[Any, Any, Any]:
    """``(weight, scales, biases)`` of a random matrix of ``dtype`` (bfloat16 unless
    given), drawn and quantized a slice of rows at a time (groups run along rows, so
    slicing rows changes nothing); the scales and biases have its dtype."""
    import mlx.core as mx

    dtype = dtype or mx.bfloat16
    parts: list[tuple[Any, Any, Any]] = []
    slices = list(_slices(*shape))
    keys = mx.random.split(key, len(slices) + 1)  # a second key: a one-slice split too
    for (start, end), part_key in zip(slices, keys, strict=False):
        floats = INIT_STD * mx.random.normal(
            (end - start, shape[1]), dtype=dtype, key=part_key
        ).astype(dtype)
        weight, scales, biases = mx.quantize(floats, group_size=group_size, bits=bits)
        mx.eval(weight, scales, biases)
        del floats
        parts.append((weight, scales, biases))
    if len(parts) == 1:
        return parts[0]
    joined = tuple(mx.concatenate([p[i] for p in parts]) for i in range(3))
    mx.eval(*joined)
    return joined[0], joined[1], joined[2]


def tensors(config: dict[str, Any], seed: int = 0) -> Iterator[tuple[str, Any]]:
    """Every tensor of the quantized model, one at a time, named as mlx-lm names them.

    The names, shapes and which modules are quantized come from mlx-lm's own Qwen3 model,
    built lazily (its parameters are never computed), with ``nn.quantize``'s rule: a
    linear or embedding layer whose rows split into whole groups.
    """
    import mlx.core as mx
    import mlx.nn as nn
    from mlx_lm.models.qwen3 import Model, ModelArgs

    quant = config["quantization"]
    group, bits = int(quant["group_size"]), int(quant["bits"])
    dtype = getattr(mx, str(config.get("torch_dtype", "bfloat16")))
    model = Model(ModelArgs.from_dict(config))  # lazy: nothing allocated
    quantized: set[str] = set()
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear | nn.Embedding):
            continue
        if "weight" in module and module.weight.shape[-1] % group == 0:
            quantized.add(name)
    modules = model.named_modules()
    keys = mx.random.split(mx.random.key(seed), len(modules))
    for (name, module), key in zip(modules, keys, strict=True):
        if name in quantized:
            shape = tuple(module.weight.shape)
            weight, scales, biases = quantized_random(
                (int(shape[0]), int(shape[1])), group, bits, key, dtype
            )
            yield f"{name}.weight", weight
            yield f"{name}.scales", scales
            yield f"{name}.biases", biases
        elif isinstance(module, nn.RMSNorm):
            yield f"{name}.weight", mx.ones(module.weight.shape, dtype=dtype)
    del model


def stand_in_tokenizer(folder: Path, vocab_size: int) -> None:
    """A word-level tokenizer of ``vocab_size`` ids, for token counts only."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {EOS: 0, **{f"w{i}": i for i in range(1, vocab_size)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=EOS))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "eos_token": EOS,
                "pad_token": EOS,
                "unk_token": EOS,
                "model_max_length": int(QWEN3_4B_MLX_4BIT["max_position_embeddings"]),
            },
            indent=2,
        )
    )


def write_rows(folder: Path, vocab_size: int, lengths: list[int], rows: int, seed: int) -> None:
    """``data/len-NNNN/{train,valid,test}.jsonl``: rows of exactly N tokens each (N - 1
    words, then the end-of-text token mlx-lm appends)."""
    rng = random.Random(seed)
    for length in lengths:
        split_dir = folder / "data" / f"len-{length:04d}"
        split_dir.mkdir(parents=True, exist_ok=True)
        for split, count in (("train", rows), ("valid", max(2, rows // 4)), ("test", 2)):
            lines = [
                json.dumps(
                    {
                        "text": " ".join(
                            f"w{rng.randrange(1, vocab_size)}" for _ in range(length - 1)
                        )
                    }
                )
                for _ in range(count)
            ]
            (split_dir / f"{split}.jsonl").write_text("\n".join(lines) + "\n")


def build(
    folder: Path,
    config: dict[str, Any],
    lengths: list[int],
    rows: int = 16,
    seed: int = 0,
    force: bool = False,
) -> Path:
    """The model folder (reused when a complete one with this config is there; rows of
    lengths it lacks are added)."""
    import mlx.core as mx

    stamp = folder / "build.json"
    if not force and stamp.is_file() and json.loads(stamp.read_text())["config"] == config:
        missing = [n for n in lengths if not (folder / "data" / f"len-{n:04d}").is_dir()]
        write_rows(folder, int(config["vocab_size"]), missing, rows, seed)
        return folder
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tic = time.perf_counter()
    shard: dict[str, Any] = {}
    shard_files: list[dict[str, Any]] = []

    def flush() -> None:
        path = tmp / f"part-{len(shard_files):05d}.safetensors"
        mx.save_safetensors(str(path), shard, metadata={"format": "mlx"})
        shard_files.append({"path": path, "names": list(shard)})
        shard.clear()

    size = 0
    for name, array in tensors(config, seed):
        shard[name] = array
        size += array.nbytes
        if size >= SHARD_BYTES:
            flush()
            size = 0
            print(f"  shard {len(shard_files)} written ({time.perf_counter() - tic:.0f} s)",
                  file=sys.stderr)  # fmt: skip
    if shard:
        flush()
    weight_map: dict[str, str] = {}
    for number, part in enumerate(shard_files, 1):
        final = f"model-{number:05d}-of-{len(shard_files):05d}.safetensors"
        part["path"].rename(tmp / final)
        weight_map.update(dict.fromkeys(part["names"], final))
    (tmp / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": dict(sorted(weight_map.items()))}, indent=2)
    )
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    stand_in_tokenizer(tmp, int(config["vocab_size"]))
    write_rows(tmp, int(config["vocab_size"]), lengths, rows, seed)
    (tmp / "build.json").write_text(
        json.dumps(
            {
                "config": config,
                "seconds": round(time.perf_counter() - tic, 1),
                "seed": seed,
                "weights": "random (normal, std 0.02), quantized; tokenizer: a stand-in",
            },
            indent=2,
        )
    )
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=QWEN3_4B_MLX_4BIT["num_hidden_layers"],
                        help="transformer blocks (default: 36, the full model)")  # fmt: skip
    parser.add_argument("--out", type=Path, help="the model folder (default: in the cache)")
    parser.add_argument("--lengths", default="64,128,256",
                        help="token lengths of the data rows, comma-separated")  # fmt: skip
    parser.add_argument("--rows", type=int, default=16, help="training rows per length")
    parser.add_argument("--force", action="store_true", help="rebuild a complete folder")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16",
                        help="the scales' and norms' dtype, which the activations take "
                        "(bfloat16 as released; float32 runs ~8x faster on a CPU)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.layers < 1:
        parser.error("--layers must be at least 1")
    lengths = [int(n) for n in args.lengths.split(",") if n.strip()]
    if not lengths or min(lengths) < 2:
        parser.error("--lengths: token counts of at least 2, e.g. 64,128,256")
    folder = args.out or default_folder(args.layers, args.dtype)
    tic = time.perf_counter()
    config = shape_config(args.layers, torch_dtype=args.dtype)
    build(folder, config, lengths, args.rows, force=args.force)
    print(f"{folder} ({time.perf_counter() - tic:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
