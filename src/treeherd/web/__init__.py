"""The web console at /ui: server-rendered pages of the tree, services, machines, the edge and the
event stream, served by the manager from the installed package (no asset from elsewhere)."""

from __future__ import annotations

from litestar.types import ControllerRouterHandler

from treeherd.web.actions import ConsoleActions
from treeherd.web.edits import ConsoleEdits
from treeherd.web.incidents import ConsoleIncidents
from treeherd.web.login import ConsoleLogin
from treeherd.web.pages import ConsolePages

__all__ = ["console_handlers"]


def console_handlers() -> list[ControllerRouterHandler]:
    """The console's route handlers, to be added to the manager's application."""
    return [ConsolePages, ConsoleActions, ConsoleEdits, ConsoleIncidents, ConsoleLogin]
