"""Several "hosts" on one machine for tests: each a network namespace with its own loopback and one
address on a private /24, all joined by a bridge; processes run inside a host, links go down and up,
and everything (processes, namespaces, the bridge and its cables) is removed at the end.

Layout (nothing is added to the machine's own namespace):

    treeherd-<pid>-switch   the bridge `br0`, and one port `p<N>` per host
    treeherd-<pid>-<host>   `lo` (its own 127.0.0.1) and `eth0` = 10.231.X.N/24, the other end of `p<N>`

Hosts have no default route, and nothing routes or NATs the /24 anywhere: traffic stays between the
hosts. A host's link is taken down at the switch port (like a pulled cable: packets are dropped, the
host keeps its address). Namespaces are made and removed with `ip` (iproute2); a process enters one
with `nsenter --net` (which execs the command, so its pid is the command's), and the test process
itself reaches a host from a short-lived thread that joined its namespace (`Host.call`): a socket opened
there stays in that namespace.

Names carry the pid of the process that made them, so that a run finds and removes what a crashed
earlier run left (`remove_leftovers`) without touching a run still in progress.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from treeherd.testing.netns import (
    COMMAND_SECONDS,
    NETNS_DIR,
    PREFIX,
    claim,
    free_subnet,
    in_namespace,
    ip,
    kill_all_in,
    namespaces,
    netns_identity,
    pids_in_netns,
    release,
    remove_leftovers,
    remove_namespace,
    write_file,
)
from treeherd.testing.netns import unavailable as hosts_unavailable

__all__ = ["Host", "Network", "hosts_unavailable", "network", "pids_in_netns", "remove_leftovers"]

_HOST_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,30}$")
T = TypeVar("T")


class Host:
    """One host: a network namespace with `lo` up and `eth0` on the network's bridge."""

    def __init__(self, network: Network, name: str, index: int, address: str) -> None:
        self.network = network
        self.name = name
        self.index = index
        self.address = address
        self.netns = f"{network.prefix}{name}"
        self.port = f"p{index}"  # its cable's end on the switch

    def __repr__(self) -> str:
        return f"Host({self.name!r}, {self.address})"

    @property
    def netns_path(self) -> Path:
        return NETNS_DIR / self.netns

    # ---- processes -----------------------------------------------------------------------------
    def command(self, args: Sequence[str]) -> list[str]:
        """`args` as a command line that runs inside this host."""
        return ["nsenter", f"--net={self.netns_path}", "--", *args]

    def popen(self, args: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """subprocess.Popen of `args` inside this host (the child's pid is the command's own). Returns
        once the child is in the host (or has exited), so `pids()` and `kill_all()` see it."""
        process = subprocess.Popen(self.command(args), **kwargs)
        identity = netns_identity(self.netns_path)
        deadline = time.monotonic() + COMMAND_SECONDS
        while process.poll() is None and time.monotonic() < deadline:
            try:
                stat = os.stat(f"/proc/{process.pid}/ns/net")
            except OSError:
                break
            if (stat.st_dev, stat.st_ino) == identity:
                break
            time.sleep(0.001)
        return process

    def run(
        self, args: Sequence[str], *, timeout: float = 30.0, **kwargs: Any
    ) -> subprocess.CompletedProcess[Any]:
        """subprocess.run of `args` inside this host, bounded by `timeout` (text output captured
        unless the caller says otherwise)."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        kwargs.setdefault("check", False)
        return subprocess.run(self.command(args), timeout=timeout, **kwargs)

    def call(self, fn: Callable[..., T], *args: Any, timeout: float = 30.0) -> T:
        """fn(*args) from this host's network: sockets it opens belong to the host."""
        return in_namespace(self.netns_path, fn, args, timeout)

    def connect(self, address: str, port: int, *, timeout: float = 2.0) -> socket.socket:
        """A TCP connection from this host to address:port (OSError when refused or unreachable)."""
        return self.call(socket.create_connection, (address, port), timeout, timeout=timeout + 5)

    def http_get(
        self, url: str, *, headers: dict[str, str] | None = None, timeout: float = 5.0
    ) -> tuple[int, bytes]:
        """GET `url` from this host: (status, body). OSError when it cannot connect."""

        def get() -> tuple[int, bytes]:
            request = urllib.request.Request(url, headers=headers or {})
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    return int(response.status), bytes(response.read())
            except urllib.error.HTTPError as error:
                return error.code, error.read()

        return self.call(get, timeout=timeout + 5)

    def pids(self) -> list[int]:
        """Every live process in this host's network namespace, as the OS sees them."""
        return pids_in_netns(netns_identity(self.netns_path))

    def kill_all(self) -> int:
        """SIGKILL every process in this host (and whatever they start meanwhile) until none is left;
        returns how many there were."""
        return kill_all_in(netns_identity(self.netns_path), self.netns)

    # ---- the link ------------------------------------------------------------------------------
    def link_down(self) -> None:
        """Unplug this host: its switch port goes down, its packets are dropped both ways."""
        ip("-n", self.network.switch, "link", "set", self.port, "down")

    def link_up(self) -> None:
        ip("-n", self.network.switch, "link", "set", self.port, "up")

    def link_is_up(self) -> bool:
        [link] = json.loads(ip("-n", self.network.switch, "-j", "link", "show", self.port).stdout)
        return "UP" in link.get("flags", [])


class Network:
    """Hosts on one bridge; a context manager that removes them all on exit, whatever happened.

    `Network(["a", "b"])` makes hosts a and b (addresses .1 and .2 of a free 10.231.X.0/24 unless
    `subnet` says which); `add(name)` makes another one later."""

    def __init__(self, hosts: Iterable[str] = (), *, subnet: str | None = None) -> None:
        self.prefix = f"{PREFIX}{os.getpid()}-"
        self.switch = f"{self.prefix}switch"
        self._names = list(hosts)
        self._subnet_text = subnet
        self.subnet: ipaddress.IPv4Network | None = None
        self.hosts: dict[str, Host] = {}
        self._made: list[str] = []  # namespaces made, in order

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def __iter__(self) -> Iterator[Host]:
        return iter(self.hosts.values())

    def namespaces(self) -> list[str]:
        return list(self._made)

    def start(self) -> Network:
        reason = hosts_unavailable()
        if reason is not None:
            raise RuntimeError(f"cannot make test hosts: {reason}")
        claim(self.prefix)
        try:
            remove_leftovers()
            for stale in [name for name in namespaces() if name.startswith(self.prefix)]:
                remove_namespace(stale)  # left by a network of this process that failed to close
            subnet = ipaddress.ip_network(self._subnet_text) if self._subnet_text else free_subnet()
            if not isinstance(subnet, ipaddress.IPv4Network) or subnet.prefixlen != 24:
                raise ValueError(f"subnet {self._subnet_text!r} is not an IPv4 /24")
            self.subnet = subnet
            self._add_namespace(self.switch)
            ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            ip("-n", self.switch, "link", "set", "br0", "up")
            for name in self._names:
                self.add(name)
        except BaseException:
            self.close()
            raise
        return self

    def _add_namespace(self, name: str) -> None:
        """A namespace with its loopback up, where new interfaces get no IPv6 (no link-local chatter)."""
        ip("netns", "add", name)
        self._made.append(name)
        ip("-n", name, "link", "set", "lo", "up")
        in_namespace(NETNS_DIR / name, write_file, ("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1"), 10)

    def add(self, name: str) -> Host:
        """Make host `name`: its namespace, loopback up, and a cable from its eth0 to the bridge."""
        if self.subnet is None:
            raise RuntimeError("start the network before adding hosts")
        if not _HOST_NAME.match(name) or name == "switch":
            raise ValueError(f"host name {name!r}: use 1-31 of a-z, 0-9 and '-', and not 'switch'")
        if name in self.hosts:
            raise ValueError(f"host {name!r} exists already")
        index = len(self.hosts) + 1
        if index > self.subnet.num_addresses - 2:
            raise ValueError(f"{self.subnet} has no address left for host {name!r}")
        host = Host(self, name, index, str(self.subnet.network_address + index))
        self._add_namespace(host.netns)
        self.hosts[name] = host
        ip(
            "-n",
            self.switch,
            "link",
            "add",
            host.port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            host.netns,
        )
        ip("-n", self.switch, "link", "set", host.port, "master", "br0", "up")
        ip("-n", host.netns, "addr", "add", f"{host.address}/{self.subnet.prefixlen}", "dev", "eth0")
        ip("-n", host.netns, "link", "set", "eth0", "up")
        return host

    def close(self) -> None:
        """End every process in the hosts, then remove the hosts and the switch (which takes the
        bridge and every cable with it). Safe to call twice, and after a failed start."""
        errors = []
        for name in reversed(self._made):
            try:
                remove_namespace(name)
            except (RuntimeError, OSError, subprocess.TimeoutExpired) as error:
                errors.append(str(error))
        self._made.clear()
        release(self.prefix)
        if errors:
            raise RuntimeError("; ".join(errors))

    def __enter__(self) -> Network:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.close()


@contextlib.contextmanager
def network(hosts: Iterable[str] = (), *, subnet: str | None = None) -> Iterator[Network]:
    """`with network(["a", "b"]) as net:` hosts net["a"] and net["b"], all removed afterwards."""
    with Network(hosts, subnet=subnet) as made:
        yield made
