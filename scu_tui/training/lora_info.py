"""What a run knows of its LoRA adapters, as plain data (no MLX): the run reports and saves
it, the model code that attaches the adapters builds it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LoraInfo:
    """What the run reports and saves about the trainable part of the model."""

    trainable: int  # parameters that train
    total: int  # all parameters
    adapter_config: dict[str, Any]  # written as adapter_config.json next to the adapters
