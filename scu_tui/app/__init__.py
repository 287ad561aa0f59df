"""The Textual dashboard (imported only when the app is launched: Textual is not light).

``make_app`` builds a :class:`ScuApp`; the training side never imports this package.
"""

from __future__ import annotations

from scu_tui.app.app import ScuApp, attach_app, make_app

__all__ = ["ScuApp", "attach_app", "make_app"]
