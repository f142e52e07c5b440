"""`treeherd manager --store etcd://...` as a real process: the cluster lives in etcd, another manager on
the same prefix sees it, and bad stores are refused clearly."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import fresh_prefix
from treeherd.model.requests import NodeCreate
from treeherd.testing.ports import free_port
from treeherd.testing.processes import ManagerProcess, treeherd_command
from treeherd.transport.client import Client

pytestmark = pytest.mark.e2e
CLI_TIMEOUT = 30


def _paths(url: str) -> list[str]:
    client = Client(url)
    try:
        return sorted(node["path"] for node in client.get("/api/v1/nodes", list))
    finally:
        client.close()


def _manager(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*treeherd_command(), "manager", "--data-dir", str(data_dir), "--listen", "127.0.0.1:0", *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
    )


def test_two_managers_share_one_cluster_in_etcd(tmp_path: Path, etcd_server) -> None:
    store = etcd_server.url(fresh_prefix())
    with ManagerProcess(tmp_path / "one", extra_args=("--store", store)) as one:
        client = Client(one.url)
        try:
            client.request("POST", "/api/v1/nodes", NodeCreate(path="corp"))
            client.request("POST", "/api/v1/nodes", NodeCreate(path="corp.web"))
        finally:
            client.close()
    assert not (tmp_path / "one" / "treeherd.db").exists()  # nothing went to SQLite
    with ManagerProcess(tmp_path / "two", extra_args=("--store", store)) as two:
        assert _paths(two.url) == ["corp", "corp.web"]
    # The first manager remembers its cluster: another prefix's cluster is refused.
    other = etcd_server.url(fresh_prefix())
    with ManagerProcess(tmp_path / "three", extra_args=("--store", other)):
        pass
    refused = _manager(tmp_path / "one", "--store", other)
    assert refused.returncode == 1
    assert "holds cluster" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_unreachable_etcd_names_the_endpoints(tmp_path: Path) -> None:
    ports = [free_port(), free_port()]
    result = _manager(tmp_path / "data", "--store", f"etcd://127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}")
    assert result.returncode == 1
    assert (
        f"127.0.0.1:{ports[0]} (connection refused), 127.0.0.1:{ports[1]} (connection refused)"
        in result.stderr
    )
    assert "Traceback" not in result.stderr


def test_a_bad_store_url_is_refused(tmp_path: Path) -> None:
    result = _manager(tmp_path / "data", "--store", "etcd://h:2379?colour=red")
    assert result.returncode == 1
    assert "unknown option 'colour'" in result.stderr
    assert "Traceback" not in result.stderr
