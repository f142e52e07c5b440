"""What a killed nginx master leaves: its workers keep the port, so a new master could not bind; `start`
and `stop` end that process group first."""

from __future__ import annotations

import os
import signal
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest

from treeherd.proxy.nginx import Nginx, find_nginx
from treeherd.testing.ports import free_port
from treeherd.testing.waiting import eventually

pytestmark = pytest.mark.skipif(find_nginx() is None, reason="nginx is not installed")


@pytest.fixture
async def nginx(tmp_path: Path) -> AsyncIterator[tuple[Nginx, int]]:
    binary = find_nginx()
    assert binary is not None
    prefix = tmp_path / "nginx"
    (prefix / "logs").mkdir(parents=True)
    port = free_port()
    server = Nginx(binary, prefix)
    server.main_conf.write_text(
        f"pid {server.pid_path};\nworker_processes 2;\nevents {{}}\n"
        f"http {{ access_log off; server {{ listen 127.0.0.1:{port}; return 200 'ok'; }} }}\n"
    )
    try:
        yield server, port
    finally:
        await server.stop()


def _answers(port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
        return bool(response.status == 200)


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


async def test_a_start_after_a_killed_master_ends_its_workers(nginx: tuple[Nginx, int]) -> None:
    server, port = nginx
    old = await server.start()
    workers = psutil.Process(old).children()
    assert len(workers) == 2
    os.kill(old, signal.SIGKILL)
    await eventually(lambda: server.master_pid() is None, "the master to die")
    assert all(_alive(w) for w in workers)  # the fact this guards against: workers outlive the master
    new = await server.start()
    assert new != old
    assert not any(_alive(w) for w in workers)
    assert _answers(port)


async def test_stop_ends_what_a_killed_master_left(nginx: tuple[Nginx, int]) -> None:
    server, _ = nginx
    old = await server.start()
    workers = psutil.Process(old).children()
    os.kill(old, signal.SIGKILL)
    await server.stop()
    assert not any(_alive(w) for w in workers)
