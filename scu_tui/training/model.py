"""Load a model through mlx-lm and attach LoRA adapters."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import mlx.nn as nn
from mlx.utils import tree_flatten

from scu_tui.config import EMBEDDED_DEMO, LoraSettings
from scu_tui.errors import UserError
from scu_tui.training.lora_info import LoraInfo

HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
#: How a ModelArgs dataclass says that config.json lacks keys it needs.
MISSING_ARGS = re.compile(r"missing \d+ required (?:positional |keyword-only )?arguments?: (.*)$")


def resolve_model_path(path: str) -> str:
    """``@demo`` -> the embedded model's folder; anything else unchanged."""
    if path == EMBEDDED_DEMO:
        from scu_tui.demo import MODEL_DIR

        return str(MODEL_DIR)
    return path


def _json_error(path: Path, exc: json.JSONDecodeError) -> UserError:
    return UserError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON ({exc.msg})")


def check_config(folder: Path) -> dict[str, Any]:
    """The folder's ``config.json``: a JSON object naming its architecture (``model_type``)."""
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise _json_error(path, exc) from None
    except (ValueError, RecursionError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    if not isinstance(config, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(config).__name__}")
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not model_type.strip():
        got = "it is missing" if model_type is None else f"got {json.dumps(model_type)}"
        raise UserError(
            f"{path}: key 'model_type' must name the architecture (e.g. \"qwen3\"); {got}"
        )
    return config


def check_safetensors(path: Path) -> None:
    """A whole safetensors file: its header parses and every tensor's bytes are there.

    A download cut short is the usual cause; MLX would say so only mid-load, in C++ terms.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            prefix = fh.read(8)
            length = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
            if not 2 <= length <= size - 8:
                raise UserError(
                    f"{path}: truncated or not a safetensors file ({size} bytes); "
                    "download it again"
                )
            header = json.loads(fh.read(length))
    except OSError as exc:
        raise UserError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    except (ValueError, RecursionError):
        raise UserError(f"{path}: corrupt safetensors header; download it again") from None
    if not isinstance(header, dict):
        raise UserError(f"{path}: corrupt safetensors header; download it again")
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(o, int) for o in offsets)
        ):
            raise UserError(f"{path}: corrupt safetensors header (tensor '{name}')")
        end = max(end, offsets[1])
    data = size - 8 - length
    if end > data:
        raise UserError(
            f"{path}: truncated: its tensors need {end} bytes of data, the file has {data} "
            "(an incomplete download?); download it again"
        )


def check_model_dir(folder: Path, label: str) -> dict[str, Any]:
    """Everything about a local model folder that can be checked without loading it."""
    if not folder.is_dir():
        raise UserError(f"model {label}: not a directory (expected a folder with config.json)")
    if not (folder / "config.json").is_file():
        raise UserError(
            f"model {label}: no config.json in this folder: not an mlx-lm / Hugging Face model"
        )
    config = check_config(folder)
    weights = sorted(folder.glob("model*.safetensors"))
    if not weights:
        raise UserError(f"model {label}: no model*.safetensors weights in this folder")
    for path in weights:
        check_safetensors(path)
    return config


def _load_error(label: str, exc: Exception) -> UserError:
    """What mlx-lm's exception means for the user, on one line."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, KeyError):
        text = f"config.json lacks key {exc.args[0]!r}" if exc.args else text
    elif isinstance(exc, TypeError):
        missing = MISSING_ARGS.search(text)
        if missing:
            text = f"config.json lacks {missing.group(1)}, which its architecture needs"
        else:
            text += " (a value in config.json of the wrong type?)"
    elif isinstance(exc, AttributeError):
        text += " (a value in config.json of the wrong type?)"
    return UserError(f"model {label}: mlx-lm cannot load it: {text}")


def load_model(path: str) -> tuple[nn.Module, Any]:
    """``mlx_lm.load`` with errors a user can act on (exit code 2 through UserError)."""
    resolved = resolve_model_path(path)
    local = Path(resolved).expanduser()
    if local.exists():
        check_model_dir(local, path)
        from mlx_lm import load

        try:
            model, tokenizer = load(str(local))[:2]
        except Exception as exc:  # config values of the wrong type fail in many ways
            raise _load_error(path, exc) from None
        return model, tokenizer
    if not HUB_ID.match(resolved):
        raise UserError(f"model {path}: no such directory (and not a hub id like 'org/name')")
    from mlx_lm import load

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


def is_quantized(model: nn.Module) -> bool:
    """Whether any layer of ``model`` (adapted layers' bases included) holds quantized weights."""
    from mlx_lm.models.switch_layers import QuantizedSwitchLinear

    kinds = (nn.QuantizedLinear, nn.QuantizedEmbedding, QuantizedSwitchLinear)
    return any(isinstance(m, kinds) for _, m in model.named_modules())


def apply_lora(model: nn.Module, lora: LoraSettings, model_path: str) -> LoraInfo:
    """Freeze the base and make the part that trains, as ``mlx_lm.lora`` does for its
    ``fine_tune_type``: LoRA or DoRA layers (QLoRA on a quantized base), or for ``full``
    the top ``num_layers`` blocks unfrozen. ``lora.dequantize`` first turns a quantized
    base into float weights (``full`` needs it: quantized layers never train)."""
    from mlx_lm.tuner.utils import linear_to_lora_layers
    from mlx_lm.utils import dequantize_model

    layers = len(getattr(model, "layers", []))
    if lora.num_layers > layers:
        raise UserError(
            f"lora.num_layers = {lora.num_layers}: the model has only {layers} transformer blocks"
        )
    if lora.dequantize:
        dequantize_model(model)
    params: dict[str, Any] | None = {
        "rank": lora.rank,
        "scale": lora.alpha / lora.rank,
        "dropout": lora.dropout,
    }
    model.freeze()
    if lora.type == "full":
        if lora.dropout > 0:
            raise UserError(
                f"lora.dropout = {lora.dropout}: full fine-tuning has no adapter layers to "
                "drop inputs of; set lora.dropout = 0 (or use lora.type = 'lora' / 'dora')"
            )
        if is_quantized(model):
            raise UserError(
                "lora.type = 'full' on a quantized model: its quantized layers cannot train "
                "and would stay frozen. Add --set lora.dequantize=true to train a float copy "
                "(about 4x the memory of 4-bit weights), or use lora.type = 'lora' / 'dora'"
            )
        for block in model.layers[-max(lora.num_layers, 0) :]:
            block.unfreeze()
        params = None
    else:
        assert params is not None
        if lora.keys:
            params["keys"] = list(lora.keys)
        try:
            linear_to_lora_layers(model, lora.num_layers, params, use_dora=lora.type == "dora")
        except ValueError as exc:  # e.g. a layer kind DoRA does not support
            raise UserError(f"lora.type = {lora.type!r}: {exc}") from None
    trainable = sum(v.size for _, v in tree_flatten(model.trainable_parameters()))
    if trainable == 0:
        raise UserError(
            f"lora.keys = {list(lora.keys)}: no module of the model matches; nothing to train"
        )
    total = sum(v.size for _, v in tree_flatten(model.parameters()))
    config = {
        "fine_tune_type": lora.type,
        "model": resolve_model_path(model_path),  # a path mlx-lm can load (not "@demo")
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
