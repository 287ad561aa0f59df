"""``scu-tui generate DIR``: try a run's adapters (its model, its adapters, its chat
template), and the ``mlx_lm.generate`` command that does the same without scu-tui."""

from __future__ import annotations

import shlex
from pathlib import Path

from scu_tui.compare import adapter_folder, prompt_and_reference
from scu_tui.config import Settings
from scu_tui.errors import UserError

MAX_TOKENS = 64


def example_prompt(settings: Settings) -> str:
    """A prompt from the run's own test (or validation) split, to try the adapters on."""
    try:
        from scu_tui.training.data import raw_split

        _, raw, fmt = raw_split(settings.data, ("test", "valid"), settings.training.seed)
        pair = prompt_and_reference(dict(raw.rows[0]), fmt) if len(raw.rows) else None
    except UserError:
        pair = None
    return pair[0][-1]["content"] if pair else "Hello!"


def mlx_lm_command(run_dir: Path, settings: Settings, prompt: str) -> str:
    """A command line that runs as printed: the model as mlx-lm can load it (a path for
    the embedded demo), the adapters the run chose, the prompt."""
    from scu_tui.training.model import resolve_model_path

    adapters = adapter_folder(run_dir)
    return shlex.join(
        [
            "mlx_lm.generate",
            "--model",
            resolve_model_path(settings.model.path),
            "--adapter-path",
            str(adapters),
            "--prompt",
            prompt,
        ]
    )


def generate_with_run(
    run_dir: Path,
    settings: Settings,
    prompt: str | None,
    max_tokens: int = MAX_TOKENS,
    base: bool = False,
) -> tuple[str, str]:
    """(prompt, answer): the run's model with its adapters (``base``: without them)."""
    from mlx_lm import generate

    from scu_tui.compare import _prompt_text, load_adapters_into
    from scu_tui.training.model import load_model

    adapters = adapter_folder(run_dir)
    model, tokenizer = load_model(settings.model.path)
    if prompt is None:
        prompt = example_prompt(settings)
    if not base:
        load_adapters_into(model, settings, adapters)
    model.eval()
    text = _prompt_text(tokenizer, [{"role": "user", "content": prompt}])
    answer = str(generate(model, tokenizer, prompt=text, max_tokens=max_tokens)).strip()
    return prompt, answer
