"""scu-tui: LoRA fine-tuning on MLX, steered by the S-SCU from a terminal dashboard."""

from scu_tui.blas import use_system_openblas

__version__ = "0.1.0"

# Must happen before anything imports mlx.core (see scu_tui.blas).
use_system_openblas()
