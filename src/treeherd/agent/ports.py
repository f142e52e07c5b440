"""Whether a task's host ports are free on this machine before it starts, and who holds one that is not.

A port is in use when a TCP socket bound to the wildcard address on it cannot be made (another
process listens on it, on any address). Who holds it comes from the kernel's socket table
(`psutil.net_connections`), which names the process only when the agent may see it (as root, or the
agent's own user); otherwise the message says "by another process". The check leaves a window: a
process may take the port between the check and the task's start; the task then fails as before.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Iterable

import psutil

from treeherd.core.tasks.allocate import port_in_use_message

__all__ = ["busy_port", "holder", "port_in_use"]


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT leftovers do not count
        try:
            probe.bind(("0.0.0.0", port))
        except OSError as error:
            return error.errno == errno.EADDRINUSE
    return False


def holder(port: int) -> str:
    """ "pid N, NAME" of the process listening on `port`, or "" when it cannot be told."""
    with contextlib.suppress(psutil.Error, OSError):
        for connection in psutil.net_connections(kind="tcp"):
            if connection.status == psutil.CONN_LISTEN and connection.laddr and connection.laddr.port == port:
                if connection.pid is None:
                    return ""
                try:
                    return f"pid {connection.pid}, {psutil.Process(connection.pid).name()}"
                except psutil.Error:
                    return f"pid {connection.pid}"
    return ""


def busy_port(ports: Iterable[int], hostname: str) -> str | None:
    """The message about the first of `ports` in use here, None when all are free."""
    for port in ports:
        if port_in_use(port):
            return port_in_use_message(port, hostname, holder(port))
    return None
