"""Load a model through mlx-lm and attach LoRA adapters."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.nn as nn
from mlx.utils import tree_flatten

from scu_tui.config import EMBEDDED_DEMO, LoraSettings
from scu_tui.errors import UserError

HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def resolve_model_path(path: str) -> str:
    """``@demo`` -> the embedded model's folder; anything else unchanged."""
    if path == EMBEDDED_DEMO:
        from scu_tui.demo import MODEL_DIR

        return str(MODEL_DIR)
    return path


def load_model(path: str) -> tuple[nn.Module, Any]:
    """``mlx_lm.load`` with errors a user can act on (exit code 2 through UserError)."""
    from mlx_lm import load

    resolved = resolve_model_path(path)
    local = Path(resolved).expanduser()
    if local.exists():
        if not local.is_dir():
            raise UserError(f"model {path}: not a directory (expected a folder with config.json)")
        if not (local / "config.json").is_file():
            raise UserError(
                f"model {path}: no config.json in this folder: not an mlx-lm / Hugging Face model"
            )
        try:
            model, tokenizer = load(str(local))[:2]
        except (ValueError, KeyError, FileNotFoundError, OSError) as exc:
            raise UserError(f"model {path}: mlx-lm cannot load it: {exc}") from None
        return model, tokenizer
    if not HUB_ID.match(resolved):
        raise UserError(f"model {path}: no such directory (and not a hub id like 'org/name')")
    try:
        model, tokenizer = load(resolved)[:2]
    except Exception as exc:  # the hub client raises many types when offline
        raise UserError(
            f"model {path}: could not get it from the Hugging Face hub ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'no details'}). If this machine is "
            "offline, download the model elsewhere (e.g. `hf download "
            f"{resolved} --local-dir DIR`) and pass --model DIR."
        ) from None
    return model, tokenizer


@dataclass(frozen=True)
class LoraInfo:
    trainable: int
    total: int
    adapter_config: dict[str, Any]


def apply_lora(model: nn.Module, lora: LoraSettings, model_path: str) -> LoraInfo:
    """Freeze the base and convert linear layers to LoRA (QLoRA when the base is quantized)."""
    from mlx_lm.tuner.utils import linear_to_lora_layers

    layers = len(getattr(model, "layers", []))
    if lora.num_layers > layers:
        raise UserError(
            f"lora.num_layers = {lora.num_layers}: the model has only {layers} transformer blocks"
        )
    params: dict[str, Any] = {
        "rank": lora.rank,
        "scale": lora.alpha / lora.rank,
        "dropout": lora.dropout,
    }
    if lora.keys:
        params["keys"] = list(lora.keys)
    model.freeze()
    linear_to_lora_layers(model, lora.num_layers, params)
    trainable = sum(v.size for _, v in tree_flatten(model.trainable_parameters()))
    if trainable == 0:
        raise UserError(
            f"lora.keys = {list(lora.keys)}: no module of the model matches; nothing to train"
        )
    total = sum(v.size for _, v in tree_flatten(model.parameters()))
    config = {
        "fine_tune_type": "lora",
        "model": model_path,
        "num_layers": lora.num_layers,
        "lora_parameters": params,
    }
    return LoraInfo(trainable=trainable, total=total, adapter_config=config)


def set_lora_dropout(model: nn.Module, p: float) -> int:
    """Set the dropout probability of every LoRA layer; returns how many were changed.

    ``nn.Dropout`` keeps ``1 - p`` as a Python float, which a compiled step bakes in:
    the caller must rebuild its compiled functions after this.
    """
    count = 0
    for _, module in model.named_modules():
        dropout = getattr(module, "dropout", None)
        if hasattr(module, "lora_a") and isinstance(dropout, nn.Dropout):
            dropout._p_1 = 1.0 - p
            count += 1
    return count


def write_adapter_config(config: dict[str, Any], folder: Path) -> None:
    from scu_tui.training.checkpoint import atomic_write_text

    atomic_write_text(folder / "adapter_config.json", json.dumps(config, indent=2) + "\n")
