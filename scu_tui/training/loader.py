"""Where a run's model and data come from: a seam between :class:`scu_tui.run.Run` and
mlx-lm.

A run asks its :class:`Loader` for everything it trains on, once its folder is claimed.
The product's loader, :class:`MlxLmLoader`, loads the model through mlx-lm, reads the data
and attaches LoRA; a benchmark or a test passes its own (a tiny model on synthetic data,
say) and the run around it is the product's, unchanged.

Nothing here imports MLX until :meth:`MlxLmLoader.load` runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from scu_tui.training.lora_info import LoraInfo

__all__ = ["Loaded", "Loader", "LoraInfo", "MlxLmLoader"]

if TYPE_CHECKING:
    from scu_tui.config import Settings
    from scu_tui.training.data import DataBundle


@dataclass(frozen=True)
class Loaded:
    """Everything a run trains on. ``model`` is an ``mlx.nn.Module`` whose trainable
    parameters are what the optimizer updates; ``tokenizer`` is the model's (None when the
    data came tokenized); ``resolved`` says where the model and the data really came from,
    for the run's config file."""

    model: Any
    tokenizer: Any
    data: DataBundle
    lora: LoraInfo
    resolved: Mapping[str, str] = field(default_factory=dict)


class Loader(Protocol):
    """Builds a run's model and data from its settings (on the training thread).

    Raise :class:`scu_tui.errors.UserError` for what the user must fix (a bad path, data
    that does not fit the model); the run then refuses with that one line.
    """

    def load(self, settings: Settings) -> Loaded: ...


class MlxLmLoader:
    """The product's loader: an mlx-lm model (local folder, hub id or ``@demo``), its
    data, and LoRA adapters (QLoRA on a quantized base)."""

    def load(self, settings: Settings) -> Loaded:
        import mlx.core as mx

        from scu_tui.training.data import load_data, resolve_data_path
        from scu_tui.training.model import apply_lora, load_model, resolve_model_path

        s = settings
        model, tokenizer = load_model(s.model.path)
        data = load_data(s.data, tokenizer, s.training.seed)
        mx.random.seed(s.training.seed)  # the LoRA weights start from the run's seed
        lora = apply_lora(model, s.lora, s.model.path)
        resolved = {
            "model": resolve_model_path(s.model.path),
            "data": resolve_data_path(s.data.path),
        }
        return Loaded(model, tokenizer, data, lora, resolved)
