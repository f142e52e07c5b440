"""Parsers of haproxy's own view: `show servers state`, `show stat`, `show info` and the master's
`show proc`, into typed rows, so callers and tests read haproxy's state instead of trusting ours.

The parsers take the reply text and do no I/O; `servers_state`, `stat` and friends fetch and parse.
"""

from __future__ import annotations

import csv
import io

import msgspec

from treeherd.proxy.runtime import query

__all__ = [
    "ProcTable",
    "ServerState",
    "StatRow",
    "info",
    "parse_info",
    "parse_proc",
    "parse_servers_state",
    "parse_stat",
    "proc",
    "servers_state",
    "stat",
]

# srv_op_state and srv_admin_state values (haproxy's server.h).
OP_STOPPED, OP_STARTING, OP_RUNNING, OP_STOPPING = 0, 1, 2, 3
ADMIN_FORCED_MAINT = 0x01
ADMIN_INHERITED_MAINT = 0x02
ADMIN_DRAIN = 0x08


class ServerState(msgspec.Struct, frozen=True, kw_only=True):
    """One server as `show servers state` reports it."""

    backend: str
    name: str
    address: str
    port: int
    op_state: int
    admin_state: int
    weight: int
    check_health: int

    @property
    def in_maintenance(self) -> bool:
        return bool(self.admin_state & (ADMIN_FORCED_MAINT | ADMIN_INHERITED_MAINT))

    @property
    def up(self) -> bool:
        """Running and not in maintenance: haproxy may route new connections to it."""
        return self.op_state == OP_RUNNING and not self.in_maintenance


class StatRow(msgspec.Struct, frozen=True, kw_only=True):
    """One row of `show stat`: a frontend, backend or server, with the counters tests look at."""

    proxy: str
    name: str
    status: str
    weight: int
    current_sessions: int
    total_sessions: int
    connection_errors: int
    retries: int
    redispatches: int
    address: str
    check_status: str

    @property
    def is_server(self) -> bool:
        return self.name not in ("FRONTEND", "BACKEND")


class ProcTable(msgspec.Struct, frozen=True, kw_only=True):
    """The master's `show proc`: its pid, reload count and failed reloads, and its workers
    (`current` is the worker of the latest loaded configuration; `old` finish earlier connections)."""

    master_pid: int
    reloads: int
    failed_reloads: int
    current: list[int]
    old: list[int]


def _int(text: str) -> int:
    return int(text) if text.lstrip("-").isdigit() else 0


def parse_servers_state(text: str) -> list[ServerState]:
    """Rows of `show servers state` (format version 1)."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return []
    if lines[0].strip() != "1":
        raise ValueError(f"unknown servers state format {lines[0]!r}")
    header: list[str] = []
    rows: list[ServerState] = []
    for line in lines[1:]:
        if line.startswith("#"):
            header = line.lstrip("# ").split()
            continue
        fields = dict(zip(header, line.split(), strict=False))
        rows.append(
            ServerState(
                backend=fields["be_name"],
                name=fields["srv_name"],
                address=fields["srv_addr"],
                port=_int(fields["srv_port"]),
                op_state=_int(fields["srv_op_state"]),
                admin_state=_int(fields["srv_admin_state"]),
                weight=_int(fields["srv_uweight"]),
                check_health=_int(fields["srv_check_health"]),
            )
        )
    return rows


def parse_stat(text: str) -> list[StatRow]:
    """Rows of `show stat` (CSV with a `# ` header)."""
    body = text.lstrip("# ")
    rows: list[StatRow] = []
    for fields in csv.DictReader(io.StringIO(body)):
        if not fields.get("pxname"):
            continue
        rows.append(
            StatRow(
                proxy=fields["pxname"],
                name=fields["svname"],
                status=fields.get("status") or "",
                weight=_int(fields.get("weight") or ""),
                current_sessions=_int(fields.get("scur") or ""),
                total_sessions=_int(fields.get("stot") or ""),
                connection_errors=_int(fields.get("econ") or ""),
                retries=_int(fields.get("wretr") or ""),
                redispatches=_int(fields.get("wredis") or ""),
                address=fields.get("addr") or "",
                check_status=fields.get("check_status") or "",
            )
        )
    return rows


def parse_info(text: str) -> dict[str, str]:
    """`show info` as a mapping of field name to value."""
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {key.strip(): value.strip() for key, value in pairs}


def parse_proc(text: str) -> ProcTable:
    """The master CLI's `show proc` table."""
    master_pid = reloads = failed = 0
    workers: list[tuple[int, int]] = []  # (reloads survived, pid)
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 3 or not fields[0].isdigit():
            continue
        if fields[1] == "master":
            master_pid, reloads = int(fields[0]), _int(fields[2])
            if len(fields) > 4 and fields[3] == "[failed:":
                failed = _int(fields[4].rstrip("]"))
        elif fields[1] == "worker":
            workers.append((_int(fields[2]), int(fields[0])))
    if not master_pid:
        raise ValueError(f"no master in show proc output: {text[:200]!r}")
    # The current worker is the youngest: it has lived through the fewest reloads (a failed reload
    # counts too, so the current worker's count is not always 0).
    youngest = min((reloads for reloads, _ in workers), default=0)
    current = sorted(pid for reloads, pid in workers if reloads == youngest)
    old = sorted(pid for reloads, pid in workers if reloads != youngest)
    return ProcTable(master_pid=master_pid, reloads=reloads, failed_reloads=failed, current=current, old=old)


async def servers_state(admin_socket: str, backend: str = "", *, timeout_s: float = 5.0) -> list[ServerState]:
    return parse_servers_state(
        await query(admin_socket, f"show servers state {backend}".strip(), timeout_s=timeout_s)
    )


async def stat(admin_socket: str, *, timeout_s: float = 5.0) -> list[StatRow]:
    return parse_stat(await query(admin_socket, "show stat", timeout_s=timeout_s))


async def info(admin_socket: str, *, timeout_s: float = 5.0) -> dict[str, str]:
    return parse_info(await query(admin_socket, "show info", timeout_s=timeout_s))


async def proc(master_socket: str, *, timeout_s: float = 5.0) -> ProcTable:
    return parse_proc(await query(master_socket, "show proc", timeout_s=timeout_s))
