"""The `treeherd` entry point: one command for managers, agents and operators.

Client commands talk to a manager's API (`--manager URL`, or TREEHERD_MANAGER, or the current client
context's managers, default http://127.0.0.1:7400; see transport/credentials.py). Every failure ends with a one-line `error: ...` on stderr and a non-zero exit:
1 for a refused or failed request, 2 for a usage error.
"""

from __future__ import annotations

import sys

import click

from treeherd import __version__
from treeherd.transport.client import Client, ClientError
from treeherd.transport.credentials import CredentialError, manager_setting


class Context:
    """What every client command gets: the managers to talk to (resolved when first asked: the
    client context commands work on a configuration that names no manager) and a lazily connected API
    client."""

    def __init__(self, manager: str | None) -> None:
        self._explicit = manager
        self._manager: str | None = None
        self._client: Client | None = None

    @property
    def manager(self) -> str:
        if self._manager is None:
            try:
                self._manager = manager_setting(self._explicit)
            except CredentialError as error:
                raise ClientError(str(error)) from None
        return self._manager

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.manager)
        return self._client


pass_ctx = click.make_pass_decorator(Context)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="treeherd")
@click.option(
    "--manager",
    envvar="TREEHERD_MANAGER",
    default=None,
    metavar="URL[,URL]",
    help="the managers' API (env TREEHERD_MANAGER; default: the current context's, see `treeherd context`,"
    " else http://127.0.0.1:7400)",
)
@click.pass_context
def cli(ctx: click.Context, manager: str | None) -> None:
    """treeherd: a cluster manager built around a service tree."""
    ctx.obj = Context(manager)


def _register() -> None:
    from treeherd.cli import (
        agent,
        alerts,
        cluster,
        context,
        domain,
        edge_health,
        endpoints,
        events,
        gateway,
        logs,
        machine,
        node,
        puppet,
        report,
        server,
        service,
        store,
        token,
        tree,
    )

    for module in (
        tree,
        machine,
        domain,
        service,
        logs,
        node,
        cluster,
        events,
        endpoints,
        server,
        agent,
        puppet,
        report,
        gateway,
        edge_health,
        alerts,
        store,
        token,
        context,
    ):
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except (ClientError, CredentialError) as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
    except SystemExit:
        raise
