"""``scu-tui fuse DIR``: the fine-tune as a model of its own.

The run's best adapters (its last ones when it has no best) are fused into the base
model's weights through mlx-lm's own layers (each LoRA or DoRA layer's ``fuse``), and
the result is written as an ordinary MLX model folder: ``config.json``, the tokenizer's
files and safetensors weights, which ``mlx_lm.generate --model FOLDER`` and any tool that
reads MLX models load without scu-tui and without the adapters.

On a quantized base, fusing re-quantizes every adapted layer: the adapters' update is
usually smaller than one quantization step, so much of it can be rounded away (mlx-lm
issue 1172). The fused model's loss on the run's test split is therefore measured against
the base with its adapters, and the fuse is refused when it moves by more than
:data:`TOLERANCE`; ``--dequantize`` writes a float model instead, which keeps the update.

The folder is written beside its target under a temporary name and renamed into place,
so a kill never leaves half a model where the fused one should be.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from scu_tui.compare import adapter_folder
from scu_tui.config import Settings
from scu_tui.errors import UserError
from scu_tui.training.checkpoint import publish_folder, staging_folder

#: The default folder, inside the run's.
FUSED_DIR = "fused"
#: Written into the fused folder: what it was made from (and how a later fuse knows the
#: folder is its own to replace).
MARKER = "fused.json"
#: The largest relative change of the test loss a re-quantized fuse may cause.
TOLERANCE = 0.01
#: The architectures mlx-lm's GGUF export knows.
GGUF_TYPES = ("llama", "mistral", "mixtral")
GGUF_FILE = "ggml-model-f16.gguf"


@dataclass(frozen=True)
class Fused:
    """What ``fuse_run`` wrote, and the losses it measured (nan: not measured)."""

    folder: str
    adapters: str
    base: str
    fine_tune_type: str
    quantized: bool  # the written weights are quantized
    loss_with_adapters: float
    loss_fused: float
    gguf: str | None
    base_quantized: bool = False  # the base's weights were quantized (before any dequantize)

    def lines(self) -> list[str]:
        wrote = f"wrote {self.folder}"
        if self.base_quantized and not self.quantized:
            wrote += " (float weights: the quantized base was dequantized)"
        out = [f"fused {self.adapters} into {self.base}", wrote]
        if math.isfinite(self.loss_fused):
            change = relative_change(self.loss_with_adapters, self.loss_fused)
            out.append(
                f"test loss with adapters {self.loss_with_adapters:.4f}, fused (re-quantized) "
                f"{self.loss_fused:.4f}: {change:+.2%}, within {TOLERANCE:.0%}"
            )
        if self.gguf:
            out.append(f"wrote {self.gguf}")
        out.append(f"try it:     mlx_lm.generate --model {self.folder} --prompt 'Hello!'")
        return out


def relative_change(before: float, after: float) -> float:
    return (after - before) / abs(before) if before else math.inf


def model_folder(resolved: str) -> Path:
    """The local folder of the run's model (a hub id: its downloaded snapshot)."""
    local = Path(resolved).expanduser()
    if local.is_dir():
        return local
    from mlx_lm.utils import hf_repo_to_path

    try:
        return Path(hf_repo_to_path(resolved))
    except Exception as exc:  # the hub client raises many types when offline
        raise UserError(f"model {resolved}: its files are not on this machine ({exc})") from None


def check_target(target: Path) -> None:
    """The target may be new, or a folder an earlier fuse wrote; nothing else is replaced."""
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise UserError(f"fuse --to {target}: exists and is not a folder; choose another")
    if target.is_dir() and any(target.iterdir()) and not (target / MARKER).is_file():
        raise UserError(
            f"fuse --to {target}: a folder that scu-tui fuse did not write; "
            "choose another (an earlier fused folder is replaced)"
        )


def fuse_layers(model: Any, dequantize: bool) -> int:
    """Every LoRA / DoRA layer replaced by its fused linear layer; returns how many."""
    from mlx.utils import tree_unflatten

    fused = [
        (name, module.fuse(dequantize=dequantize))
        for name, module in model.named_modules()
        if hasattr(module, "fuse")
    ]
    if fused:
        model.update_modules(tree_unflatten(fused))
    return len(fused)


def fuse_run(
    run_dir: Path,
    settings: Settings,
    to: Path | None = None,
    *,
    dequantize: bool = False,
    gguf: bool = False,
    tolerance: float = TOLERANCE,
) -> Fused:
    """Write the run's model with its adapters fused to ``to`` (default ``DIR/fused``)."""
    from mlx_lm.utils import dequantize_model, load_config, save_config, save_model

    from scu_tui.compare import _split_loss, load_adapters_into, load_test_set
    from scu_tui.training.model import (
        check_config,
        is_quantized,
        load_model,
        resolve_model_path,
    )

    adapters = adapter_folder(run_dir)
    target = to if to is not None else run_dir / FUSED_DIR
    check_target(target)
    resolved = resolve_model_path(settings.model.path)
    source = model_folder(resolved)
    model_type = str(check_config(source).get("model_type"))
    if gguf and model_type not in GGUF_TYPES:
        raise UserError(
            f"fuse --gguf: mlx-lm exports GGUF for {', '.join(GGUF_TYPES)} models only; "
            f"this model is {model_type!r} (drop --gguf: the MLX folder is written either way)"
        )
    model, tokenizer = load_model(settings.model.path)
    config = load_config(source)
    load_adapters_into(model, settings, adapters)
    base_quantized = is_quantized(model)
    float_out = dequantize or settings.lora.dequantize or not base_quantized
    if gguf and not float_out:
        raise UserError("fuse --gguf: mlx-lm exports GGUF from float weights; add --dequantize")
    measure = not float_out
    before = after = math.nan
    if measure:
        tests = load_test_set(settings, tokenizer)
        before = _split_loss(model, tests.split, settings)
    fuse_layers(model, dequantize)
    if float_out:
        model = dequantize_model(model)  # a base dequantized for training, or --dequantize
        config.pop("quantization", None)
        config.pop("quantization_config", None)
    if measure:
        after = _split_loss(model, tests.split, settings)
        change = relative_change(before, after)
        if not abs(change) <= tolerance:
            raise UserError(
                f"fuse {run_dir}: re-quantizing the fused weights moves the test loss from "
                f"{before:.4f} (base + adapters) to {after:.4f} ({change:+.1%}), more than "
                f"{tolerance:.0%}: the quantized model would lose the adapters' effect. "
                "Add --dequantize to write a float model that keeps it (larger on disk)"
            )
    try:
        tmp = staging_folder(target)
    except OSError as exc:
        raise UserError(f"fuse --to {target}: cannot write beside it: {exc}") from None
    try:
        save_model(tmp, model)
        save_config(dict(config), config_path=tmp / "config.json")
        tokenizer.save_pretrained(str(tmp))
        for extra in (*source.glob("*.py"), source / "generation_config.json"):
            if extra.is_file():
                shutil.copy(extra, tmp / extra.name)
        gguf_path = None
        if gguf:
            from mlx.utils import tree_flatten
            from mlx_lm.gguf import convert_to_gguf

            weights = dict(tree_flatten(model.parameters()))
            with contextlib.redirect_stdout(io.StringIO()):  # it names the temporary folder
                convert_to_gguf(source, weights, config, str(tmp / GGUF_FILE))
            gguf_path = str(target / GGUF_FILE)
        result = Fused(
            folder=str(target),
            adapters=str(adapters),
            base=resolved,
            fine_tune_type=settings.lora.type,
            quantized=not float_out,
            loss_with_adapters=before,
            loss_fused=after,
            gguf=gguf_path,
            base_quantized=base_quantized,
        )
        facts = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                 for k, v in asdict(result).items()}  # fmt: skip
        (tmp / MARKER).write_text(json.dumps(facts, indent=2) + "\n", encoding="utf-8")
        publish_folder(tmp, target)
    except OSError as exc:  # a full disk, a folder made read-only meanwhile
        raise UserError(f"fuse --to {target}: cannot write the model: {exc}") from None
    finally:
        if tmp.exists():  # a failed write leaves no half model behind
            shutil.rmtree(tmp, ignore_errors=True)
    return result
