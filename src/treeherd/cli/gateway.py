"""`treeherd render nginx`, `treeherd gateway run|ls`, `treeherd availability`, `treeherd backend` and
`treeherd policy`: the edge gateway from the command line."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import click

from treeherd.cli.main import Context, pass_ctx
from treeherd.cli.output import FORMAT_OPTION, done, fail, listing, print_json, print_table
from treeherd.model.gateway import BackendState, GatewayRecord, HealthPolicy
from treeherd.model.routing import RoutingSnapshot

WINDOWS = ("1m", "5m", "1h")


@click.group("render")
def render() -> None:
    """Render configuration from the service tree."""


@render.command("nginx")
@click.option(
    "--out", "out", type=click.Path(file_okay=False, path_type=Path), required=True, help="directory to write"
)
@click.option("--log-dir", default="logs", show_default=True, help="where relative log paths go")
@click.option("--listen-host", default=None, help="address the servers listen on (default: every address)")
@click.option(
    "--check/--no-check", default=True, show_default=True, help="validate with the real nginx -t first"
)
@click.option("--nginx-binary", default="nginx", show_default=True)
@pass_ctx
def render_nginx_command(
    ctx: Context, out: Path, log_dir: str, listen_host: str | None, check: bool, nginx_binary: str
) -> None:
    """Render the nginx configuration once: OUT/treeherd.conf (for nginx's http context) and
    OUT/nginx.conf (a main configuration that includes it). Nothing is written unless all of it is valid."""
    from treeherd.proxy.nginx import find_nginx
    from treeherd.render.nginx import ROUTING_FILE, MainOptions, render_main, render_nginx

    snapshot = ctx.client.get("/api/v1/gateway/snapshot", RoutingSnapshot)
    rendered = render_nginx(snapshot, _render_options(log_dir, listen_host))
    for problem in rendered.problems:
        click.echo(f"warning: {problem}", err=True)
    out = out.resolve()
    try:
        out.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".render-", dir=out))
    except OSError as error:
        fail(f"cannot write to {out}: {error.strerror}")
        return
    try:
        files = {
            ROUTING_FILE: rendered.text,
            "nginx.conf": render_main(
                MainOptions(
                    include_path=str(out / ROUTING_FILE),
                    pid_path=str(out / "logs" / "nginx.pid"),
                    error_log_path=str(out / "logs" / "error.log"),
                    temp_dir=str(out / "temp"),
                )
            ),
        }
        for name, text in files.items():
            (staging / name).write_text(text)
        if check:
            binary = find_nginx(nginx_binary)
            if binary is None:
                fail(f"{nginx_binary} is not installed: install nginx, or render with --no-check")
                return
            test_main = render_main(
                MainOptions(
                    include_path=str(staging / ROUTING_FILE),
                    pid_path=str(staging / "logs" / "nginx.pid"),
                    error_log_path=str(staging / "logs" / "error.log"),
                    temp_dir=str(staging / "temp"),
                )
            )
            _check(binary, staging, test_main)
        for name in files:
            os.replace(staging / name, out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    click.echo(f"wrote {out / ROUTING_FILE} and {out / 'nginx.conf'} (revision {snapshot.revision})")


def _render_options(log_dir: str, listen_host: str | None) -> Any:
    from treeherd.render.nginx import RenderOptions

    return RenderOptions(log_dir=log_dir, listen_host=listen_host)


def _check(binary: str, staging: Path, main_text: str) -> None:
    """`nginx -t` on the staged files, with relative log paths under the staging directory."""
    (staging / "logs").mkdir(exist_ok=True)
    (staging / "temp").mkdir(exist_ok=True)
    test_conf = staging / "nginx-test.conf"
    test_conf.write_text(main_text)
    result = subprocess.run(
        [
            binary,
            "-t",
            "-q",
            "-p",
            f"{staging}/",
            "-c",
            str(test_conf),
            "-e",
            str(staging / "logs" / "error.log"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        reason = "; ".join(
            line.removeprefix("nginx: ") for line in result.stderr.splitlines() if "test failed" not in line
        )
        fail(f"nginx -t refused the rendered configuration, nothing was written: {reason}")


@click.group("gateway")
def gateway() -> None:
    """The edge gateway: nginx kept in step with the service tree."""


@gateway.command("run")
@click.option(
    "--nginx-prefix",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="nginx's own directory",
)
@click.option("--nginx-binary", default="nginx", show_default=True)
@click.option(
    "--log-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="access and error logs (default: PREFIX/logs)",
)
@click.option("--name", default="edge", show_default=True, help="the gateway's name in events and reports")
@click.option("--listen-host", default=None, help="address the servers listen on (default: every address)")
@click.option(
    "--min-wait",
    type=click.FloatRange(0.0, 60.0),
    default=0.2,
    show_default=True,
    help="quiet time before a re-render (s)",
)
@click.option(
    "--max-wait",
    type=click.FloatRange(0.0, 600.0),
    default=2.0,
    show_default=True,
    help="longest delay of a re-render (s)",
)
@click.option(
    "--health-interval",
    type=click.FloatRange(0.05, 60.0),
    default=1.0,
    show_default=True,
    help="log polling period (s)",
)
@click.option(
    "--probe-interval",
    type=click.FloatRange(0.05, 600.0),
    default=2.0,
    show_default=True,
    help="probe period of ejected backends (s)",
)
@click.option(
    "--probes-needed",
    type=click.IntRange(1, 100),
    default=3,
    show_default=True,
    help="successful probes before a return",
)
@pass_ctx
def gateway_run(ctx: Context, nginx_prefix: Path, nginx_binary: str, log_dir: Path | None, name: str, listen_host: str | None,
                min_wait: float, max_wait: float, health_interval: float, probe_interval: float, probes_needed: int) -> None:  # fmt: skip
    """Run the gateway: start or adopt nginx, follow the manager's changes, watch availability."""
    from treeherd.cli.gateway_runner import run_gateway
    from treeherd.gateway.gateway import GatewayOptions
    from treeherd.proxy.nginx import find_nginx

    binary = find_nginx(nginx_binary)
    if binary is None:
        fail(
            f"{nginx_binary} is not installed: install nginx (Debian: apt-get install nginx) or pass --nginx-binary PATH"
        )
        return
    options = GatewayOptions(
        manager_url=ctx.manager,
        prefix=nginx_prefix.resolve(),
        name=name,
        binary=binary,
        log_dir=log_dir.resolve() if log_dir else None,
        listen_host=listen_host,
        min_wait_s=min_wait,
        max_wait_s=max(max_wait, min_wait),
        health_interval_s=health_interval,
        report_interval_s=max(health_interval, 1.0),
        probe_interval_s=probe_interval,
        probes_needed=probes_needed,
    )
    run_gateway(options)


@gateway.command("ls")
@FORMAT_OPTION
@pass_ctx
def gateway_ls(ctx: Context, fmt: str) -> None:
    """Gateways, their live configuration and last event."""
    records = ctx.client.get("/api/v1/gateways", list[GatewayRecord])
    listing(
        fmt,
        records,
        ["NAME", "CONFIG", "LAST EVENT"],
        lambda g: [g.name, g.config_sha256 or "-", g.summary()],
    )


@gateway.command("show")
@click.argument("name", default="edge")
@FORMAT_OPTION
@pass_ctx
def gateway_show(ctx: Context, name: str, fmt: str) -> None:
    """A gateway's recent events (the last 50), oldest first."""
    record = ctx.client.get(f"/api/v1/gateways/{name}", GatewayRecord)
    if fmt == "json":
        print_json(record)
        return
    print_table(
        ["AT", "EVENT", "REASON"],
        [[e.at.strftime("%Y-%m-%d %H:%M:%S"), e.type, e.reason] for e in record.recent],
    )


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f}%"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


@click.command("availability")
@click.argument("path", required=False)
@click.option("--window", type=click.Choice(WINDOWS), default="5m", show_default=True)
@FORMAT_OPTION
@pass_ctx
def availability(ctx: Context, path: str | None, window: str, fmt: str) -> None:
    """Availability (share of requests not answered 5xx) and latency per service and backend."""
    reports = ctx.client.request("GET", "/api/v1/availability", query={"path": path}, type=list)
    if fmt == "json":
        print_json(reports)
        return
    rows = []
    for report in reports:
        for service in report["services"]:
            stats = service["windows"].get(window, {})
            rows.append(
                _row(service["path"], "(service)", stats, (service.get("alert") and "ALERT") or "", report)
            )
            for backend in service["backends"]:
                name = f"{backend['hostname'] or '?'} {backend['address']}"
                rows.append(_row("", name, backend["windows"].get(window, {}), backend["state"], report))
    print_table(["SERVICE", "BACKEND", "REQUESTS", "5XX", "AVAILABILITY", "P50 MS", "P99 MS", "STATE"], rows)


def _row(path: str, backend: str, stats: dict[str, Any], state: str, report: dict[str, Any]) -> list[str]:
    state = (state + " (stale report)") if report.get("stale") else state
    return [
        path,
        backend,
        str(stats.get("requests", 0)),
        str(stats.get("errors", 0)),
        _percent(stats.get("availability")),
        _ms(stats.get("p50_ms")),
        _ms(stats.get("p99_ms")),
        state or "-",
    ]


@click.group("backend")
def backend() -> None:
    """Backends of the edge proxy: pins and ejections."""


@backend.command("pin")
@click.argument("path")
@click.argument("hostname", metavar="BACKEND")
@click.argument("pin", type=click.Choice(["in", "out", "none"]))
@FORMAT_OPTION
@pass_ctx
def backend_pin(ctx: Context, path: str, hostname: str, pin: str, fmt: str) -> None:
    """Pin a backend of PATH in (never ejected), out (takes no traffic) or none (automatic).

    BACKEND is a bound machine's hostname, or a task id or ADDRESS:PORT of an endpoint of a service
    on PATH."""
    body = {"pin": None if pin == "none" else pin}
    state = ctx.client.request("PUT", f"/api/v1/backends/{path}/{hostname}", body, type=BackendState)
    done(fmt, state, f"{hostname} on {path}: pin {pin}")


@backend.command("ls")
@FORMAT_OPTION
@pass_ctx
def backend_ls(ctx: Context, fmt: str) -> None:
    """Backends with a pin or an ejection."""
    states = ctx.client.get("/api/v1/backends", list[BackendState])
    listing(fmt, states, ["NODE", "MACHINE", "PIN", "EJECTED", "REASON"],
            lambda s: [s.node_id, s.machine_id, s.pin, s.ejected, s.reason])  # fmt: skip


@click.group("policy")
def policy() -> None:
    """Health policies: alert and ejection rules of a node and its subtree."""


@policy.command("set")
@click.argument("path")
@click.option("--alert-below", type=float, help="alert when availability falls under this share (e.g. 0.99)")
@click.option("--alert-window", type=click.Choice(WINDOWS))
@click.option("--alert-min-requests", type=int)
@click.option("--webhook", help="http:// URL that receives a JSON POST when the alert fires or resolves")
@click.option("--eject-below", type=float, help="eject a backend whose availability falls under this share")
@click.option("--eject-window", type=click.Choice(WINDOWS))
@click.option("--eject-min-requests", type=int)
@click.option(
    "--eject-cap",
    type=float,
    help="most of a node's backends ejected at once (share, default 0.34; one may always go while a"
    " healthy peer keeps serving)",
)
@click.option("--no-alert", is_flag=True, help="switch the alert rule off")
@click.option("--no-eject", is_flag=True, help="switch automatic ejection off")
@FORMAT_OPTION
@pass_ctx
def policy_set(
    ctx: Context,
    path: str,
    alert_below: float | None,
    alert_window: str | None,
    alert_min_requests: int | None,
    webhook: str | None,
    eject_below: float | None,
    eject_window: str | None,
    eject_min_requests: int | None,
    eject_cap: float | None,
    no_alert: bool,
    no_eject: bool,
    fmt: str,
) -> None:
    """Set PATH's health policy (fields not given keep their values). PATH `/` is the root policy that
    every node without one of its own inherits; until it is set it is the built-in default: ejection
    under 0.5 availability over 1m with at least 20 requests, no alert."""
    values: dict[str, Any] = {
        "alert_below": alert_below,
        "alert_window": alert_window,
        "alert_min_requests": alert_min_requests,
        "webhook": webhook,
        "eject_below": eject_below,
        "eject_window": eject_window,
        "eject_min_requests": eject_min_requests,
        "eject_cap": eject_cap,
    }
    body = {name: value for name, value in values.items() if value is not None}
    if no_alert:
        body["alert_below"] = None
    if no_eject:
        body["eject_below"] = None
    stored = ctx.client.request("PUT", f"/api/v1/policies/{_policy_path(path)}", body, type=HealthPolicy)
    done(fmt, stored, f"health policy of {path} set")


def _policy_path(path: str) -> str:
    """The root policy is `/` on the command line and `_root` in the URL."""
    return "_root" if path == "/" else path


@policy.command("ls")
@FORMAT_OPTION
@pass_ctx
def policy_ls(ctx: Context, fmt: str) -> None:
    """Every node's own health policy, and the root policy (`/`; "/ (default)" while not set)."""
    policies = ctx.client.get("/api/v1/policies", list[HealthPolicy])
    listing(fmt, policies, ["NODE", "ALERT BELOW", "WINDOW", "MIN", "WEBHOOK", "EJECT BELOW", "WINDOW", "MIN", "CAP"],
            lambda p: [_node_shown(p), p.alert_below, p.alert_window, p.alert_min_requests, p.webhook, p.eject_below,
                       p.eject_window, p.eject_min_requests, p.eject_cap])  # fmt: skip


def _node_shown(policy: HealthPolicy) -> str:
    if policy.node_id == "":
        return "/ (default)" if policy.id == "default" else "/"
    return policy.node_id


@policy.command("rm")
@click.argument("path")
@pass_ctx
def policy_rm(ctx: Context, path: str) -> None:
    """Remove PATH's own policy (it inherits its nearest ancestor's again; `/` the built-in default)."""
    ctx.client.request("DELETE", f"/api/v1/policies/{_policy_path(path)}")
    if path == "/":
        click.echo("root health policy removed: the built-in default applies again")
    else:
        click.echo(f"health policy of {path} removed")


COMMANDS = [render, gateway, availability, backend, policy]
