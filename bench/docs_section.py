"""docs/benchmarks.md is written by several benchmarks, each owning the text between its
own ``<!-- bench:NAME:begin/end -->`` markers; this replaces one such section."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
DOC_HEADER = """# Benchmarks

Written by the scripts in `bench/` (see `bench/README.md`); each section says the command
that reproduces it. Numbers depend on the machine and move with the product: rerun them.
"""


def write_section(name: str, body: str, doc: Path = DOC) -> None:
    """Replace the text between this section's markers (or append the section)."""
    begin, end = f"<!-- bench:{name}:begin -->", f"<!-- bench:{name}:end -->"
    block = f"{begin}\n{body.rstrip()}\n{end}\n"
    text = doc.read_text(encoding="utf-8") if doc.exists() else DOC_HEADER
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + block + ("\n" + tail.lstrip("\n") if tail.strip() else "")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(re.sub(r"\n{3,}", "\n\n", text), encoding="utf-8")
