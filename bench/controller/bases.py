"""The pretrained bases of the LoRA tasks, built offline and cached.

Each base is a tiny float32 model of one mlx-lm family (a few hundred thousand to a couple
of million parameters) with its own byte-level BPE, pre-trained here for a few hundred
steps on a corpus the machine already has:

- ``facts``: the demo's world of facts in prose (``scu_tui.demo.build``);
- ``docs``: the docstrings of Python's own standard library (English technical prose);
- ``code``: the source of Python's own standard library (its functions, as written).

The standard library is split by module, by a hash of the module's name, into the modules
a base pre-trains on and the modules the tasks fine-tune and validate on, so a task's text
is never in its base's corpus. Everything is deterministic (fixed seeds, sorted files);
the cache key holds every setting that shapes a base and the Python version whose library
it read, so a change builds a new entry. A base is built once, into a temporary folder
renamed into place, so a killed build leaves nothing half-written behind.
"""

from __future__ import annotations

import ast
import fcntl
import functools
import hashlib
import json
import os
import shutil
import sys
import sysconfig
import tempfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scu_tui.demo import build

Log = Callable[[str], None]


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/scu-tui/bench`` (``~/.cache`` without it): outside the repository."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "scu-tui" / "bench"


def cached(name: str, shape: dict[str, Any], make: Callable[[Path], None]) -> Path:
    """The folder ``<cache>/<name>-<hash of shape>``, made by ``make(tmp)`` on first use
    (into a temporary folder renamed into place, so a crash never leaves half a folder)."""
    key = hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:12]
    root = cache_root()
    final = root / f"{name}-{key}"
    done = final / "DONE"
    if done.exists():
        return final
    root.mkdir(parents=True, exist_ok=True)
    with (root / f".{name}-{key}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process building it: wait, then reuse
        if not done.exists():
            _make(final, shape, make)
    return final


def _make(final: Path, shape: dict[str, Any], make: Callable[[Path], None]) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        make(tmp)
        (tmp / "DONE").write_text(json.dumps(shape, sort_keys=True) + "\n", encoding="utf-8")
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --- the standard library as a corpus -------------------------------------------------------

#: Share of standard-library modules (by name hash) each part gets: the bases pre-train on
#: "base", the tasks fine-tune on "tune" and validate on "valid".
STDLIB_PARTS = (("base", 0.7), ("tune", 0.2), ("valid", 0.1))


def stdlib_part(module: str) -> str:
    """Which part a module belongs to: a stable hash of its name (not Python's ``hash``)."""
    u = (zlib.crc32(module.encode()) % 10_000) / 10_000
    edge = 0.0
    for part, share in STDLIB_PARTS:
        edge += share
        if u < edge:
            return part
    return STDLIB_PARTS[-1][0]


def stdlib_files() -> Iterator[tuple[str, Path]]:
    """(top-level module name, file) for the library's own ``.py`` files, sorted; tests,
    site-packages, demos and tools left out."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "test", "tests", "idlelib", "lib2to3", "turtledemo", "__pycache__"}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if skip & set(rel.parts) or any(p.startswith("_") for p in rel.parts[:-1]):
            continue
        yield rel.parts[0].removesuffix(".py"), path


@dataclass
class Docstring:
    module: str
    text: str


@dataclass
class Function:
    module: str
    head: str  # the ``def`` line(s) and the docstring, as written
    body: str  # the rest of the function, as written


@dataclass
class Stdlib:
    docs: list[Docstring] = field(default_factory=list)
    functions: list[Function] = field(default_factory=list)
    sources: list[tuple[str, str]] = field(default_factory=list)  # (module, function text)


@functools.cache
def read_stdlib(max_chars: int = 1200) -> Stdlib:
    """Docstrings and functions of the standard library (each at most ``max_chars``)."""
    out = Stdlib()
    for module, path in stdlib_files():
        try:
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        lines = source.splitlines(keepends=True)
        for node in ast.walk(tree):
            if not isinstance(
                node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef
            ):
                continue
            doc = ast.get_docstring(node)
            if doc and 80 <= len(doc) <= max_chars and doc.isascii():
                out.docs.append(Docstring(module, doc.strip()))
            if not isinstance(node, ast.FunctionDef) or node.end_lineno is None:
                continue
            text = "".join(lines[node.lineno - 1 : node.end_lineno])
            if not (120 <= len(text) <= max_chars) or not text.isascii():
                continue
            indent = len(text) - len(text.lstrip(" "))
            text = "".join(  # a blank line keeps its newline: the line count must hold
                line[indent:] if line.strip() else "\n" for line in text.splitlines(True)
            )
            out.sources.append((module, text))
            first = node.body[0]
            has_doc = (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            )
            if has_doc and len(node.body) > 1 and first.end_lineno is not None:
                cut = first.end_lineno - node.lineno + 1
                parts = text.splitlines(keepends=True)
                head, body = "".join(parts[:cut]), "".join(parts[cut:])
                if body.strip():
                    out.functions.append(Function(module, head, body))
    return out


# --- the bases ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Base:
    """A tiny pre-trained base: its mlx-lm family, shape, corpus and pre-training steps."""

    name: str
    family: str  # mlx-lm model_type
    corpus: str  # "facts" | "docs" | "code"
    dims: dict[str, Any]
    steps: int
    seed: int = 11

    def shape(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "corpus": self.corpus,
            "dims": self.dims,
            "steps": self.steps,
            "seed": self.seed,
            "python": list(sys.version_info[:2]) if self.corpus != "facts" else None,
            "vocab": build.VOCAB_SIZE,
            "version": 1 if self.corpus != "code" else 2,
        }

    def describe(self) -> str:
        d = self.dims
        what = {"facts": "the demo's facts in prose", "docs": "standard-library docstrings"}
        return (
            f"{self.family} ({d['num_hidden_layers']} layers of width {d['hidden_size']}, "
            f"{d['num_attention_heads']} heads / {d['num_key_value_heads']} kv; pre-trained "
            f"{self.steps} steps on {what.get(self.corpus, 'standard-library source')})"
        )


BASES = {
    "gemma-docs": Base(
        "gemma-docs",
        "gemma",
        "docs",
        {
            "hidden_size": 96,
            "intermediate_size": 256,
            "num_hidden_layers": 3,
            "num_attention_heads": 4,
            "num_key_value_heads": 1,
            "head_dim": 24,
            "rms_norm_eps": 1e-6,
            "rope_theta": 10000.0,
            "max_position_embeddings": 512,
        },
        600,
    ),
    "phi3-code": Base(
        "phi3-code",
        "phi3",
        "code",
        {
            "hidden_size": 96,
            "intermediate_size": 192,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "max_position_embeddings": 512,
        },
        600,
    ),
}

ARCHITECTURES = {"gemma": "GemmaForCausalLM", "phi3": "Phi3ForCausalLM"}


def _config(base: Base, vocab_size: int, ids: dict[str, int]) -> dict[str, Any]:
    config: dict[str, Any] = {
        "architectures": [ARCHITECTURES[base.family]],
        "model_type": base.family,
        "vocab_size": vocab_size,
        **base.dims,
        "tie_word_embeddings": base.family != "phi3",
        "bos_token_id": ids[build.ENDOFTEXT],
        "eos_token_id": [ids[build.IM_END], ids[build.ENDOFTEXT]],
        "pad_token_id": ids[build.ENDOFTEXT],
        "torch_dtype": "float32",
    }
    config["hidden_act"] = "gelu_pytorch_tanh" if base.family == "gemma" else "silu"
    return config


def corpus(kind: str, lib: Stdlib) -> list[str]:
    """The pre-training documents of a corpus: the "base" part of the standard library."""
    if kind == "docs":
        return [d.text for d in lib.docs if stdlib_part(d.module) == "base"]
    if kind == "code":
        return [text for module, text in lib.sources if stdlib_part(module) == "base"]
    raise ValueError(f"unknown corpus {kind!r}")


def prepare_base(name: str, log: Log = print) -> Path:
    """The base's model folder (``config.json``, weights, tokenizer), built on first use."""
    base = BASES[name]

    def make(out: Path) -> None:
        docs = corpus(base.corpus, read_stdlib())
        tok = build.train_tokenizer(docs[:4000])
        fast = build.save_tokenizer(tok, out)
        ids = {t: fast.convert_tokens_to_ids(t) for t in build.SPECIAL_TOKENS}
        config = _config(base, len(fast), ids)
        stream = build.token_stream(docs, tok, ids[build.ENDOFTEXT])
        log(f"base {name}: pre-training {base.describe()} on {len(stream):,} tokens")
        model = build.pretrain(config, stream, base.steps, base.seed, log_every=200)
        build.save_model(model, config, out)

    return cached(f"base-{name}", base.shape(), make)
