"""`treeherd manager` and `treeherd up`: run the server side."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from treeherd.cli.output import fail

DEFAULT_LISTEN = "127.0.0.1:7400"


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "treeherd"


def _run(data_dir: Path, listen: str, demo: bool, agent: bool = False) -> None:
    import asyncio
    import logging

    from treeherd.api.server import StartupError, serve_manager
    from treeherd.model.errors import TreeherdError

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("treeherd").setLevel(logging.INFO)
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    try:
        with runner:
            runner.run(
                serve_manager(
                    data_dir, listen, demo=demo, local_agent=_local_agent(data_dir) if agent else None
                )
            )
    except (StartupError, TreeherdError) as error:
        fail(str(error))


def _local_agent(data_dir: Path) -> Callable[[str], Any]:
    """The agent `up` runs beside the manager, with the process executor: tasks are real processes."""

    def make(url: str) -> Any:
        from treeherd.agent import Agent, make_executor

        agent_dir = data_dir / "agent"
        return Agent(url, agent_dir, executor=make_executor("process", agent_dir))

    return make


@click.command("manager")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="where the store lives",
)
@click.option("--listen", default=DEFAULT_LISTEN, show_default=True, metavar="HOST:PORT")
def manager(data_dir: Path, listen: str) -> None:
    """Run a manager: the store and the API."""
    _run(data_dir, listen, demo=False)


@click.command("up")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="where the store lives (default: ~/.local/share/treeherd)",
)
@click.option("--listen", default=DEFAULT_LISTEN, show_default=True, metavar="HOST:PORT")
@click.option("--demo", is_flag=True, help="load an example tree when the store is empty")
def up(data_dir: Path | None, listen: str, demo: bool) -> None:
    """Run everything one machine needs in one process: a manager on the embedded store and an agent."""
    _run(data_dir or default_data_dir(), listen, demo, agent=True)


COMMANDS = [manager, up]
