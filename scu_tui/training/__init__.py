"""MLX-side code: model loading and LoRA, data, the step loop and checkpoints.

Everything here runs on the one training thread; nothing here imports Textual.
"""
