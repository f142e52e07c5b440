"""`treeherd agent`: run the agent of this machine until SIGINT or SIGTERM."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from treeherd.cli.main import Context, pass_ctx
from treeherd.cli.output import fail
from treeherd.cli.params import key_values


def _run(
    manager_url: str,
    data_dir: Path,
    hostname: str | None,
    labels: dict[str, str],
    kind: str | None,
    executor_name: str,
    haproxy: str = "auto",
    join_token_file: Path | None = None,
) -> None:
    # Imported here: the agent stack (psutil, SQLite, WebSockets) is not needed by client commands.
    import asyncio
    import logging
    import signal

    from treeherd.agent import Agent, make_executor
    from treeherd.agent.db import AgentDBError
    from treeherd.executors.base import Engine

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("treeherd").setLevel(logging.INFO)
    connect = _joined_connect(manager_url, data_dir, join_token_file)
    try:
        executor = make_executor(executor_name, data_dir, hostname)
    except ValueError as error:
        fail(str(error), code=2)
        return
    agent = Agent(
        manager_url,
        data_dir,
        executor=executor,
        hostname=hostname,
        labels=labels,
        machine_kind=kind,  # type: ignore[arg-type]  # click.Choice guarantees the literal
        haproxy=haproxy,  # type: ignore[arg-type]  # click.Choice guarantees the literal
        connect=connect,
    )
    if connect is not None:
        from treeherd.agent.certificates import CertificateKeeper
        from treeherd.runtime import utc_now

        agent.session.certificates = CertificateKeeper(data_dir, clock=utc_now)

    async def main() -> None:
        if isinstance(executor, Engine) and (problem := await executor.check()) is not None:
            await executor.close()
            fail(f"the {executor.name} executor cannot work: {problem}")
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            # Stop cleanly: the tasks keep running and the next agent resumes them.
            loop.add_signal_handler(signum, agent.stop)
        try:
            await agent.run()
        except AgentDBError as error:
            fail(str(error))

    from treeherd.runtime import event_loop_runner

    runner = event_loop_runner()
    with runner:
        runner.run(main())


def _joined_connect(manager_url: str, data_dir: Path, join_token_file: Path | None) -> Any:
    """Join the cluster first when a join token is given and this node has no certificate yet; then
    connect with the node's certificate (mutual TLS) if it has one, else as before."""
    from treeherd.runtime import utc_now
    from treeherd.transport.channel import connect_agent
    from treeherd.transport.join import JoinError, identity_files, join, node_tls
    from treeherd.transport.secret_files import InsecureSecret, read_secret

    try:
        if join_token_file is not None and not identity_files(data_dir)[0].exists():
            token = read_secret(join_token_file).decode().strip()
            join(manager_url, data_dir, token, utc_now())
            click.echo(
                f"joined the cluster: this node's certificate is in {identity_files(data_dir)[0]}", err=True
            )
        if node_tls(data_dir) is None:
            return None
    except (JoinError, InsecureSecret, OSError) as error:
        fail(str(error))
        return None

    async def connect(url: str) -> Any:
        # Read at each connection: a renewed certificate is used from the next session on.
        return await connect_agent(url, tls=node_tls(data_dir))

    return connect


@click.command("agent")
@click.option(
    "--manager",
    "manager_url",
    default=None,
    metavar="URL",
    help="the manager to join (default: treeherd's --manager, env TREEHERD_MANAGER)",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="where the agent keeps its local DB of assigned tasks, their logs and working directories",
)
@click.option("--hostname", default=None, help="the name to register under (default: this host's name)")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="a machine label (repeatable)")
@click.option(
    "--kind",
    type=click.Choice(["physical", "virtual"]),
    default=None,
    help="the machine kind (default: detected)",
)
@click.option(
    "--executor",
    type=click.Choice(["process", "docker", "hollow"]),
    default="process",
    show_default=True,
    help="how tasks run: process (local process groups), docker (containers of this host's dockerd, from"
    " local images) or hollow (nothing runs: for tests and benchmarks)",
)
@click.option(
    "--haproxy",
    type=click.Choice(["auto", "off"]),
    default="auto",
    show_default=True,
    help="run a local haproxy for the services this host's tasks depend on (auto: when installed)",
)
@click.option(
    "--join-token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="TREEHERD_JOIN_TOKEN_FILE",
    help="join the cluster with this join token (a 0600 file; `treeherd cluster join-token worker`), then"
    " connect with the node certificate it gives (kept in DATA_DIR/secrets)",
)
@pass_ctx
def agent(
    ctx: Context,
    manager_url: str | None,
    data_dir: Path,
    hostname: str | None,
    labels: tuple[str, ...],
    kind: str | None,
    executor: str,
    haproxy: str,
    join_token_file: Path | None,
) -> None:
    """Run this machine's agent: join a manager and run the tasks it assigns here."""
    _run(
        manager_url or ctx.manager,
        data_dir,
        hostname,
        key_values(labels, "--label"),
        kind,
        executor,
        haproxy,
        join_token_file,
    )


COMMANDS = [agent]
