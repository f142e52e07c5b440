"""What the gateway measures and how it acts on it: `treeherd availability`, the health policies that fire
alerts and eject failing backends (`treeherd policy`), and operators' pins (`treeherd backend`)."""

from __future__ import annotations

from typing import Any

import click

from treeherd.cli.main import Context, pass_ctx
from treeherd.cli.output import FORMAT_OPTION, done, listing, print_json, print_table
from treeherd.model.gateway import BackendState, HealthPolicy

WINDOWS = ("1m", "5m", "1h")


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f}%"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


@click.command("availability")
@click.argument("path", required=False)
@click.option(
    "--window",
    type=click.Choice([*WINDOWS, "canary"]),
    default="5m",
    show_default=True,
    help="canary: the window a canary under way is judged over",
)
@FORMAT_OPTION
@pass_ctx
def availability(ctx: Context, path: str | None, window: str, fmt: str) -> None:
    """Availability (share of requests not answered 5xx) and latency per service, backend and spec
    version of the tasks (old tasks against a canary's)."""
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
            for version in service.get("versions", []):
                name = f"{version['service']} spec {version['spec_version']} ({version['backends']} tasks)"
                state = "canary" if version["canary"] else ""
                rows.append(_row("", name, version["windows"].get(window, {}), state, report))
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


COMMANDS = [availability, backend, policy]
