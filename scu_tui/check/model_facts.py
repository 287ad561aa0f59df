"""Parameters and bytes of a model, from the loaded model or from ``config.json`` alone.

From a config alone the model is *built lazily* through mlx-lm's own classes: MLX arrays
are not computed until evaluated, so shapes and dtypes are known without allocating a
byte, and the counts are exactly the real model's (quantized layers, tied embeddings,
q/k norms and all), whatever the architecture, as long as mlx-lm supports it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_map

from scu_tui.config import LoraSettings
from scu_tui.errors import UserError

DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}


@dataclass(frozen=True)
class ModelFacts:
    """What the estimate needs to know about a model with its LoRA adapters."""

    model_type: str
    parameters: int  # base parameters (as the checkpoint counts them, unpacked)
    weight_bytes: int  # the base weights in memory, at their bits
    trainable: int  # LoRA parameters
    trainable_bytes: int
    lora_modules: int  # adapted linear layers
    lora_rank: int
    lora_dropout: bool  # dropout on the LoRA inputs keeps a mask per input element
    quantization: str  # "none" or e.g. "4-bit, group 64"
    dtype: str  # activations' dtype (the weights' float dtype)
    act_bytes: int  # bytes per activation element
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    max_positions: int
    fine_tune_type: str = "lora"  # lora | dora | full (lora.type)
    #: weight elements of the DoRA-adapted layers: on a quantized base each one's weight is
    #: dequantized in the forward pass and that float copy kept for the backward pass
    dora_elements: int = 0
    #: copies of the trainable parameters the optimizer keeps (memory.OPTIMIZER_STATES)
    optimizer_states: int = 2
    #: the quantization as numbers (0, 0: none), which ``quantization`` describes
    quant_bits: int = 0
    quant_group: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_config(folder: Path) -> dict[str, Any]:
    """``config.json`` of a model folder, as a dict (bad input is a UserError)."""
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserError(f"model {folder}: cannot read config.json: {exc.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise UserError(f"{path}: no 'model_type': not an mlx-lm / Hugging Face model config")
    return config


def _text_config(config: dict[str, Any]) -> dict[str, Any]:
    text = config.get("text_config")
    return {**config, **text} if isinstance(text, dict) else config


def _quantization(config: dict[str, Any]) -> dict[str, Any] | None:
    q = config.get("quantization") or config.get("quantization_config")
    if isinstance(q, dict) and "bits" in q and "group_size" in q:
        return q
    return None


def _dtype_name(config: dict[str, Any]) -> str:
    name = str(_text_config(config).get("torch_dtype") or config.get("dtype") or "float32")
    return name if name in DTYPES else "float32"


def lazy_model(folder: Path, config: dict[str, Any]) -> nn.Module:
    """The model of ``config.json`` with unevaluated random weights at the checkpoint's
    dtype and quantization: shapes and bytes are right, no memory is used."""
    from mlx_lm.utils import load_model

    try:
        model, _ = load_model(folder, lazy=True, strict=False)
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"model {folder}: mlx-lm cannot build it from config.json: {exc}") from None
    dtype = DTYPES[_dtype_name(config)]
    model.update(
        tree_map(
            lambda a: a.astype(dtype) if mx.issubdtype(a.dtype, mx.floating) else a,
            model.parameters(),
        )
    )
    q = _quantization(config)
    if q is not None:
        nn.quantize(model, group_size=int(q["group_size"]), bits=int(q["bits"]))
    return model


def _count(
    model: nn.Module, config: dict[str, Any], adapters: set[str] | None = None
) -> tuple[int, int]:
    """Base parameters (quantized ones unpacked, scales not counted) and their bytes;
    ``adapters``: names of adapter parameters, not counted (LoRA's matrices, DoRA's
    magnitudes)."""
    q = _quantization(config)
    params = 0
    nbytes = 0
    for name, value in tree_flatten(model.parameters()):
        if "lora_" in name or name in (adapters or ()):
            continue
        nbytes += value.nbytes
        if name.endswith((".scales", ".biases")) and q is not None:
            continue
        if value.dtype == mx.uint32 and q is not None:
            params += value.size * 32 // int(q["bits"])
        else:
            params += value.size
    return params, nbytes


def facts(model: nn.Module, config: dict[str, Any], lora: LoraSettings) -> ModelFacts:
    """Facts of ``model`` (real or lazy) after ``apply_lora``."""
    from mlx_lm.tuner.dora import DoRALinear

    c = _text_config(config)
    trainable = tree_flatten(model.trainable_parameters())
    adapters = set() if lora.type == "full" else {name for name, _ in trainable}
    params, weight_bytes = _count(model, config, adapters)
    dora = [m for _, m in model.named_modules() if isinstance(m, DoRALinear)]
    lora_modules = sum(1 for name, _ in trainable if name.endswith("lora_a"))
    q = _quantization(config)
    hidden = int(c.get("hidden_size", 0))
    heads = int(c.get("num_attention_heads", 0))
    dtype = _dtype_name(config)
    return ModelFacts(
        model_type=str(c.get("model_type", "?")),
        parameters=params,
        weight_bytes=weight_bytes,
        trainable=sum(v.size for _, v in trainable),
        trainable_bytes=sum(v.nbytes for _, v in trainable),
        lora_modules=lora_modules,
        lora_rank=lora.rank,
        lora_dropout=lora.dropout > 0,
        quantization=f"{q['bits']}-bit, group {q['group_size']}" if q else "none",
        quant_bits=int(q["bits"]) if q else 0,
        quant_group=int(q["group_size"]) if q else 0,
        dtype=dtype,
        act_bytes=DTYPES[dtype].size,
        layers=len(getattr(model, "layers", [])) or int(c.get("num_hidden_layers", 0)),
        hidden=hidden,
        intermediate=int(c.get("intermediate_size", 4 * hidden)),
        heads=heads,
        kv_heads=int(c.get("num_key_value_heads", heads)),
        head_dim=int(c.get("head_dim") or (hidden // max(heads, 1))),
        vocab=int(c.get("vocab_size", 0)),
        max_positions=int(c.get("max_position_embeddings", 0)),
        fine_tune_type=lora.type,
        dora_elements=sum(int(m.m.size) * int(m.lora_a.shape[0]) for m in dora),
    )


def facts_from_config(folder: Path, lora: LoraSettings, model_path: str) -> ModelFacts:
    """Facts from ``config.json`` alone (no weights needed, nothing allocated)."""
    from scu_tui.training.model import apply_lora

    config = read_config(folder)
    model = lazy_model(folder, config)
    apply_lora(model, lora, model_path)
    return facts(model, config, lora)
