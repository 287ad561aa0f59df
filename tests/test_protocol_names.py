"""The protocol's names are compared as members, never as string literals.

mypy does not catch ``event.by == "guard"`` against a ``StrEnum`` field (a member equals
its string), so a typo or a renamed member would pass silently: this test reads the
package's source and fails on a comparison of an attribute with a string literal that is
one of the protocol's names.
"""

from __future__ import annotations

import ast
from enum import StrEnum
from pathlib import Path
from typing import Any, get_args

import scu_tui
from scu_tui import protocol

PACKAGE = Path(scu_tui.__file__).parent
#: Every value of the protocol's string enums (a literal among them is a name written out).
NAMES = {
    member.value
    for value in vars(protocol).values()
    if isinstance(value, type) and issubclass(value, StrEnum) and value is not StrEnum
    for member in value
    if value is not protocol.RunFile
}


def is_named(hint: Any) -> bool:
    """A field typed with a protocol enum (or a union of them: a proposal's Target)."""
    options = get_args(hint) or (hint,)
    return all(isinstance(o, type) and issubclass(o, StrEnum) for o in options)


#: The event fields typed with those enums, and ``rule`` (a proposal's rule, "rollback"
#: among them): an attribute of one of these names holds a protocol name.
FIELDS = {
    name
    for hints in protocol.FIELD_TYPES.values()
    for name, hint in hints.items()
    if is_named(hint)
} | {"rule"}


def literals(node: ast.expr) -> list[str]:
    """The string literals ``node`` is: one, or those of a tuple, list or set of them."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return [s for e in node.elts for s in literals(e)]
    return []


def named_literals(tree: ast.AST) -> list[tuple[int, str, str]]:
    """(line, attribute, literal) for each comparison of a field that holds a protocol name
    (``x.by``, ``x.status``, ...) with a literal that is one: ``==``, ``!=`` either way
    round, and ``in`` a tuple, list or set of literals."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        sides = [node.left, *node.comparators]
        for op, a, b in zip(node.ops, sides, sides[1:], strict=False):
            pairs = [(a, b), (b, a)] if isinstance(op, ast.Eq | ast.NotEq) else [(a, b)]
            for attr, other in pairs:
                if not isinstance(attr, ast.Attribute) or attr.attr not in FIELDS:
                    continue
                for text in literals(other):
                    if text in NAMES:
                        found.append((node.lineno, ast.unparse(attr), text))
    return found


def test_the_scan_finds_a_literal_compared_with_a_field() -> None:
    tree = ast.parse(
        'if event.by == "guard": pass\n'
        'if e.reason in ("user", "x"): pass\n'
        'if "failed" != done.status: pass\n'
        "if event.by == Decider.GUARD: pass\n"
        'if action == "stop": pass\n'
        'if "eval" in self.effects: pass\n'
        'if choice.action == "resume": pass\n'
    )
    assert named_literals(tree) == [
        (1, "event.by", "guard"),
        (2, "e.reason", "user"),
        (3, "done.status", "failed"),
    ]


def test_no_protocol_name_is_compared_as_a_literal() -> None:
    assert {"guard", "lost", "failed", "ask", "error", "best"} <= NAMES
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for line, attr, text in named_literals(tree):
            bad.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {attr} vs {text!r}")
    assert not bad, "compare with the protocol's members instead:\n" + "\n".join(bad)
