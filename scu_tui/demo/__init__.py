"""The embedded demo: a tiny Qwen3-architecture base model and a small chat dataset."""

from pathlib import Path

DEMO_DIR = Path(__file__).parent
MODEL_DIR = DEMO_DIR / "model"
DATA_DIR = DEMO_DIR / "data"
