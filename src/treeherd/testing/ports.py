"""Loopback ports for tests and benchmarks.

Best is a server that binds port 0 itself and says which port it got (`ManagerProcess` reads it back
from the data directory, `Backend.start` from the child's stdout); next best is to hold the bound
socket (`listening_socket`). `free_port` is for what needs the number before anything binds it, such
as a haproxy or nginx configuration: the kernel picks a port nobody holds, and this process never
hands out the same port twice, so two ports picked for one test cannot collide; another process can
still take it before the server binds."""

from __future__ import annotations

import socket

__all__ = ["free_port", "listening_socket"]

_handed_out: set[tuple[str, int]] = set()
_ATTEMPTS = 100


def free_port(host: str = "127.0.0.1") -> int:
    """A port on `host` that nobody holds right now and that this process has not handed out before."""
    for _ in range(_ATTEMPTS):
        with socket.socket() as probe:
            probe.bind((host, 0))
            port = int(probe.getsockname()[1])
        if (host, port) not in _handed_out:
            _handed_out.add((host, port))
            return port
    raise RuntimeError(f"no new free port on {host} after {_ATTEMPTS} attempts")


def listening_socket(host: str = "127.0.0.1", *, backlog: int = 64) -> socket.socket:
    """A TCP socket listening on a port of `host` the kernel picked (read it with `getsockname()`);
    the caller closes it."""
    sock = socket.socket()
    try:
        sock.bind((host, 0))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock
