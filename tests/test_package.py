"""Every module of the package imports: the quick tier leaves out what trains or starts
processes, and this keeps a broken import anywhere from waiting for the full suite."""

from __future__ import annotations

import importlib
import pkgutil

import scu_tui

#: runs the command line when imported; the CLI's tests start it as ``python -m scu_tui``
ENTRY_POINT = "scu_tui.__main__"


def test_every_module_of_the_package_imports() -> None:
    names = [info.name for info in pkgutil.walk_packages(scu_tui.__path__, "scu_tui.")]
    assert {"scu_tui.run", "scu_tui.app.app", "scu_tui.training.trainer"} <= set(names)
    failed: dict[str, str] = {}
    for name in names:
        if name == ENTRY_POINT:
            continue
        try:
            importlib.import_module(name)
        except Exception as exc:  # every failure at once, not only the first
            failed[name] = f"{type(exc).__name__}: {exc}"
    assert not failed, failed
