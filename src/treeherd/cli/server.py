"""`treeherd manager` and `treeherd up`: run the server side; `treeherd manager ls`: the cluster's managers.

`up` serves TLS and requires tokens by default (on 127.0.0.1), and points the client context `local` at
its URL, CA certificate and admin token, so that the CLI on the same machine needs no settings."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from treeherd.cli.main import Context, pass_ctx
from treeherd.cli.output import FORMAT_OPTION, fail, listing
from treeherd.model.managers import ManagerView

DEFAULT_LISTEN = "127.0.0.1:7400"


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "treeherd"


def _run(
    data_dir: Path,
    listen: str,
    demo: bool,
    local: Sequence[Callable[[Any], Any]] = (),
    store: str | None = None,
    require_auth: bool = False,
    external_ca: tuple[Path, Path] | None = None,
    tls: bool = False,
    cert_expiry_s: float | None = None,
    on_listening: Callable[[str], None] | None = None,
) -> None:
    import logging

    from treeherd.agent.db import AgentDBError
    from treeherd.api.server import StartupError, serve_manager
    from treeherd.model.errors import TreeherdError
    from treeherd.runtime import event_loop_runner
    from treeherd.web import console_handlers

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("treeherd").setLevel(logging.INFO)
    runner = event_loop_runner()
    try:
        with runner:
            runner.run(
                serve_manager(
                    data_dir,
                    listen,
                    demo=demo,
                    local=local,
                    store_spec=store,
                    require_auth=require_auth,
                    external_ca=external_ca,
                    tls=tls,
                    cert_expiry_s=cert_expiry_s,
                    extra_handlers=console_handlers(),
                    on_listening=on_listening,
                    plain_errors=(AgentDBError,),
                )
            )
    except (StartupError, TreeherdError) as error:
        fail(str(error))


def _local_agent(
    data_dir: Path, live_restore: bool, made: list[Any], executor: str = "process"
) -> Callable[[Any], Any]:
    """The agent `up` runs beside the manager, with the process executor (tasks are real processes) or
    the docker one. Without `live_restore` it stops its tasks when `up` stops. The agent made is
    appended to `made`."""

    def make(access: Any) -> Any:
        from treeherd.agent import Agent, make_executor
        from treeherd.model.security import Role
        from treeherd.transport.channel import connect_agent

        token, tls = access.token(Role.AGENT), access.tls()

        async def connect(url: str) -> Any:
            return await connect_agent(url, token=token, tls=tls)

        agent_dir = data_dir / "agent"
        agent = Agent(
            access.url,
            agent_dir,
            executor=make_executor(executor, agent_dir),
            live_restore=live_restore,
            connect=connect,
        )
        made.append(agent)
        return agent

    return make


def _local_gateway(data_dir: Path, nginx: str) -> Callable[[Any], Any]:
    """The edge gateway `up` runs when nginx is installed: its own prefix under the data directory,
    listening on 127.0.0.1 only; its nginx stops with `up`."""

    def make(access: Any) -> Any:
        from treeherd.gateway.gateway import GatewayOptions
        from treeherd.gateway.local import LocalGateway
        from treeherd.gateway.manager_link import ManagerLink
        from treeherd.model.security import Role

        options = GatewayOptions(
            manager_url=access.url, prefix=data_dir / "gateway", binary=nginx, listen_host="127.0.0.1"
        )
        link = ManagerLink(access.url, options.name, token=access.token(Role.GATEWAY), tls=access.tls())
        return LocalGateway(options, link=link)

    return make


def _check_docker() -> None:
    """`up --executor docker` refuses to start without a dockerd to run the tasks (or aiodocker)."""
    import asyncio

    from treeherd.agent import make_executor
    from treeherd.executors.base import Engine

    async def check() -> str | None:
        try:
            executor = make_executor("docker", Path("."))
        except ValueError as error:
            return str(error)
        if not isinstance(executor, Engine):
            return None
        try:
            return await executor.check()
        finally:
            await executor.close()

    if (problem := asyncio.run(check())) is not None:
        fail(f"the docker executor cannot work: {problem}")


@click.group("manager", invoke_without_command=True)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="the manager's own files; the embedded store too, unless --store names another (required)",
)
@click.option("--listen", default=DEFAULT_LISTEN, show_default=True, metavar="HOST:PORT")
@click.option(
    "--store",
    default=None,
    metavar="URL",
    help="keep the cluster in etcd: etcd://H1:2379,H2:2379[?prefix=/treeherd] (default: SQLite in --data-dir)",
)
@click.option(
    "--require-auth",
    is_flag=True,
    help="every API call needs a token (the first admin token is written to DATA_DIR/secrets/admin.token)",
)
@click.option(
    "--external-ca-cert",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="at the first start, use this CA certificate (PEM) as the cluster's root instead of making one",
)
@click.option(
    "--external-ca-key",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="the key of --external-ca-cert (PEM, unencrypted; copied into DATA_DIR/secrets)",
)
@click.option(
    "--tls",
    is_flag=True,
    help="serve the API and the agent channel over TLS, with a certificate of the cluster CA (clients:"
    " TREEHERD_CA_FILE=DATA_DIR/ca.crt)",
)
@click.option(
    "--cert-expiry",
    metavar="DURATION",
    help="lifetime of the node certificates this manager issues (default 90d; nodes renew in the last third)",
)
@click.pass_context
def manager(
    ctx: click.Context,
    data_dir: Path | None,
    listen: str,
    store: str | None,
    require_auth: bool,
    external_ca_cert: Path | None,
    external_ca_key: Path | None,
    tls: bool,
    cert_expiry: str | None,
) -> None:
    """Run a manager: the store and the API (`treeherd manager ls`: the cluster's managers)."""
    if ctx.invoked_subcommand is not None:
        return
    if data_dir is None:
        raise click.UsageError("Missing option '--data-dir': the manager's own files go there")
    if (external_ca_cert is None) != (external_ca_key is None):
        fail("--external-ca-cert and --external-ca-key go together: give both, or neither")
    external = (external_ca_cert, external_ca_key) if external_ca_cert and external_ca_key else None
    from treeherd.cli.params_services import duration

    expiry = None if cert_expiry is None else duration(cert_expiry, "--cert-expiry")
    if expiry is not None and expiry < 1:
        fail("--cert-expiry must be at least 1s")
    _run(
        data_dir,
        listen,
        False,
        store=store,
        require_auth=require_auth,
        external_ca=external,
        tls=tls,
        cert_expiry_s=expiry,
    )


@manager.command("ls")
@FORMAT_OPTION
@pass_ctx
def managers_ls(ctx: Context, fmt: str) -> None:
    """List the cluster's managers: address, leader or follower, store revision applied, lag."""
    managers = ctx.client.get("/api/v1/managers", list[ManagerView])
    listing(
        fmt,
        managers,
        ["ID", "ADDRESS", "ROLE", "REVISION", "LAG"],
        lambda m: [m.id or "-", m.url or "-", m.role, _or_dash(m.revision), _or_dash(m.lag)],
    )


def _or_dash(value: int | None) -> str:
    return "-" if value is None else str(value)


@click.command("up")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="where the store lives (default: ~/.local/share/treeherd)",
)
@click.option("--listen", default=DEFAULT_LISTEN, show_default=True, metavar="HOST:PORT")
@click.option("--demo", is_flag=True, help="load an example tree when the store is empty")
@click.option(
    "--gateway/--no-gateway",
    default=None,
    help="run the nginx edge gateway on 127.0.0.1 (default: when nginx is installed)",
)
@click.option("--nginx-binary", default="nginx", show_default=True, help="the nginx the gateway runs")
@click.option(
    "--live-restore",
    is_flag=True,
    help="on stop, leave the tasks' processes running for the next `up` to adopt (default: stop them)",
)
@click.option(
    "--executor",
    type=click.Choice(["process", "docker"]),
    default="process",
    show_default=True,
    help="how the local agent runs tasks: local processes, or containers of this host's dockerd",
)
@click.option(
    "--insecure-http",
    is_flag=True,
    help="serve plain http and require no token (anyone who reaches the port may do anything): the"
    " default is https with the cluster CA and tokens, the admin's in DATA_DIR/secrets/admin.token",
)
def up(
    data_dir: Path | None,
    listen: str,
    demo: bool,
    gateway: bool | None,
    nginx_binary: str,
    live_restore: bool,
    executor: str,
    insecure_http: bool,
) -> None:
    """Run everything one machine needs in one process: a manager on the embedded store, an agent, and
    the edge gateway when nginx is installed. A clean stop (Ctrl-C, SIGTERM) stops the tasks it
    started, unless --live-restore is given.

    The API is served over https with the cluster CA's certificate and every call needs a token; the
    client context `local` (~/.config/treeherd/config.toml) is pointed at the URL, DATA_DIR/ca.crt and
    the admin token DATA_DIR/secrets/admin.token, and made current if no other is, so the CLI on this
    machine works without settings. --insecure-http serves plain http with no tokens instead."""
    data_dir = data_dir or default_data_dir()
    nginx = shutil.which(nginx_binary)
    if gateway and nginx is None:
        fail(f"--gateway needs nginx: {nginx_binary!r} was not found (install nginx, or use --no-gateway)")
    agents: list[Any] = []
    if executor == "docker":
        _check_docker()
    local = [_local_agent(data_dir, live_restore, agents, executor)]
    if nginx is not None and gateway is not False:
        local.append(_local_gateway(data_dir, nginx))
    secure = not insecure_http
    _run(
        data_dir,
        listen,
        demo,
        local,
        require_auth=secure,
        tls=secure,
        on_listening=(lambda url: _point_local_context(url, data_dir)) if secure else None,
    )
    left = sum(agent.worker.left_running for agent in agents)
    if live_restore and left:
        click.echo(
            f"left {left} task{'s' if left != 1 else ''} running: the next `treeherd up` adopts them",
            err=True,
        )


LOCAL_CONTEXT = "local"


def _point_local_context(url: str, data_dir: Path) -> None:
    """Add or update the client context `local` for this `up`; current unless another one is. A client
    configuration that cannot be read is left alone, with a warning saying how to reach the manager."""
    import logging

    from treeherd.manager.admin_token import admin_token_path
    from treeherd.transport.contexts import ClientContext, ConfigError, config_path, load_config, save_config

    log = logging.getLogger("treeherd.up")
    ca, token = data_dir.resolve() / "ca.crt", admin_token_path(data_dir.resolve())
    try:
        config = load_config()
        config.contexts[LOCAL_CONTEXT] = ClientContext(LOCAL_CONTEXT, (url,), str(ca), str(token))
        if config.current_context() is None:
            config.current = LOCAL_CONTEXT
        save_config(config)
    except ConfigError as error:
        log.warning(
            "%s; the client context %r was not updated: use TREEHERD_MANAGER=%s TREEHERD_CA_FILE=%s"
            " TREEHERD_TOKEN_FILE=%s",
            error,
            LOCAL_CONTEXT,
            url,
            ca,
            token,
        )
        return
    current = "the current one" if config.current == LOCAL_CONTEXT else f"current: {config.current}"
    log.info("client context %r (%s) in %s points at %s", LOCAL_CONTEXT, current, config_path(), url)


COMMANDS = [manager, up]
