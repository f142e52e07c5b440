"""What it takes to bring a running haproxy from the servers it has to a desired `LocalProxy`: either a
reload (the set of frontends changed) or a list of runtime API commands. Pure: no I/O.

Runtime sequences (haproxy 2.6):
- add: `add server F/S ADDR:PORT <keywords>` (it starts in maintenance), `enable health F/S` when
  checks are on, `enable server F/S`;
- change: `set server F/S addr A port P`, `set weight F/S W`;
- remove: `disable server F/S` (maintenance: no new connections at once), then `del server F/S`, which
  haproxy refuses while connections remain, so deletion is the caller's business (drain, then delete);
- a server still in maintenance from an earlier removal that is wanted again is changed and re-enabled
  instead of added.
Adds come before removals so a frontend never has fewer servers than both states agree on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import msgspec

from treeherd.proxy.stats import ServerState
from treeherd.render.haproxy import (
    HaproxyOptions,
    LocalProxy,
    ProxyFrontend,
    ProxyServer,
    haproxy_name,
    server_endpoint,
    server_keywords,
)

__all__ = ["HaproxyServers", "RuntimePlan", "plan_changes", "served_state", "servers_of"]


class RuntimePlan(msgspec.Struct, frozen=True, kw_only=True):
    """`reload` alone, or the commands to send in order and the servers to delete once drained
    (as `frontend/server`)."""

    reload: bool
    commands: list[str] = []
    removals: list[str] = []


# Per frontend (haproxy name), its servers (haproxy name) and whether each is in maintenance.
HaproxyServers = Mapping[str, Mapping[str, tuple[ProxyServer, bool]]]


def servers_of(state: LocalProxy) -> dict[str, dict[str, tuple[ProxyServer, bool]]]:
    """The servers haproxy has once `state` is applied: all of them enabled."""
    return {
        haproxy_name(frontend.name): {haproxy_name(s.name): (s, False) for s in frontend.servers}
        for frontend in state.frontends
    }


def plan_changes(
    frontend_ports: Mapping[str, int],
    servers: HaproxyServers,
    desired: LocalProxy,
    options: HaproxyOptions,
) -> RuntimePlan:
    """The plan from haproxy's frontends (name → port) and servers to `desired` (already validated)."""
    if desired.frontend_ports() != dict(frontend_ports):
        return RuntimePlan(reload=True)
    adds: list[str] = []
    changes: list[str] = []
    removals: list[str] = []
    for frontend in sorted(desired.frontends, key=lambda f: haproxy_name(f.name)):
        proxy = haproxy_name(frontend.name)
        have = servers.get(proxy, {})
        wanted = {haproxy_name(s.name): s for s in frontend.servers}
        for name in sorted(wanted):
            target = f"{proxy}/{name}"
            server = wanted[name]
            if name not in have:
                endpoint = server_endpoint(server.address, server.port)
                adds.append(f"add server {target} {endpoint} {server_keywords(server, options)}")
                if options.checks:
                    adds.append(f"enable health {target}")
                adds.append(f"enable server {target}")
                continue
            current, in_maintenance = have[name]
            if (current.address, current.port) != (server.address, server.port):
                changes.append(f"set server {target} addr {server.address} port {server.port}")
            if current.weight != server.weight:
                changes.append(f"set weight {target} {server.weight}")
            if in_maintenance:
                changes.append(f"enable server {target}")
        for name in sorted(have):
            current, in_maintenance = have[name]
            if name not in wanted and not in_maintenance:
                removals.append(f"disable server {proxy}/{name}")
    commands = adds + changes + removals
    deletions = [command.removeprefix("disable server ") for command in removals]
    return RuntimePlan(reload=False, commands=commands, removals=deletions)


def served_state(
    frontends: dict[str, int], rows: Sequence[ServerState]
) -> tuple[dict[str, dict[str, tuple[ProxyServer, bool]]], LocalProxy]:
    """What a running haproxy serves, from its frontends and `show servers state` rows: its servers by
    frontend (with whether each is in maintenance) and the state of those in rotation."""
    servers: dict[str, dict[str, tuple[ProxyServer, bool]]] = {proxy: {} for proxy in frontends}
    for row in rows:
        server = ProxyServer(name=row.name, address=row.address, port=row.port, weight=row.weight)
        servers.setdefault(row.backend, {})[row.name] = (server, row.in_maintenance)
    serving = LocalProxy(
        frontends=[
            ProxyFrontend(
                name=proxy, port=port, servers=[s for s, off in servers.get(proxy, {}).values() if not off]
            )
            for proxy, port in sorted(frontends.items())
        ]
    )
    return servers, serving
