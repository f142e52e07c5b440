"""Registrations in etcd for fleet-era tools: with the etcd store, each live endpoint is also a key
`/services/<service>/<ip>:<port>` holding the seed's JSON, on an etcd lease of its TTL; read here with
the real `etcdctl`, as confd or a shell script would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.helpers import TASK_HTTP_SERVER, Cluster, running_cluster
from treeherd.model.discovery import EndpointRegister, HealthCheck
from treeherd.model.requests import ClusterUpdate, ServiceCreate, ServiceUpdate
from treeherd.model.services import PortSpec, RestartPolicy, TaskSpec
from treeherd.testing.etcd import EtcdProcess, etcd_binary
from treeherd.testing.waiting import wait_for

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(etcd_binary() is None, reason="needs etcd (apt-get install etcd-server etcd-client)"),
]
TTL_S = 3.0


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdProcess]:
    with EtcdProcess(tmp_path / "etcd") as server:
        yield server


@pytest.fixture
def cluster(tmp_path: Path, etcd: EtcdProcess) -> Iterator[Cluster]:
    with running_cluster(
        tmp_path,
        ("host-a",),
        settings=ClusterUpdate(
            heartbeat_period_s=0.5,
            heartbeat_epsilon_s=0.1,
            heartbeat_grace_multiplier=3,
            endpoint_ttl_s=TTL_S,
        ),
        executor="process",
        manager_args=("--store", etcd.url("/th")),
    ) as cluster:
        yield cluster


def etcdctl(etcd: EtcdProcess, *args: str) -> str:
    result = subprocess.run(
        ["etcdctl", f"--endpoints={etcd.endpoint}", *args],
        capture_output=True,
        text=True,
        timeout=10,
        env={**os.environ, "ETCDCTL_API": "3"},
        check=True,
    )
    return result.stdout


def services(etcd: EtcdProcess) -> dict[str, dict[str, Any]]:
    """`etcdctl get --prefix /services/`: key -> decoded value."""
    lines = etcdctl(etcd, "get", "--prefix", "/services/").splitlines()
    return {key: json.loads(value) for key, value in zip(lines[::2], lines[1::2], strict=True)}


def lease_of(etcd: EtcdProcess, key: str) -> int:
    answer = json.loads(etcdctl(etcd, "get", key, "-w", "json"))
    return int(answer["kvs"][0].get("lease", 0))


def test_endpoints_are_keys_under_services_on_leases(cluster: Cluster, etcd: EtcdProcess) -> None:
    spec = TaskSpec(
        command=[sys.executable, "-c", TASK_HTTP_SERVER],
        ports=[PortSpec(name="http")],
        restart=RestartPolicy(delay_s=0),
        health=HealthCheck(kind="http", path="/", interval_s=0.2, timeout_s=1.0, retries=2),
    )
    with cluster.client() as client:
        client.request(
            "POST", "/api/v1/services", ServiceCreate(name="api", node="corp", replicas=2, task=spec)
        )
    found = wait_for(lambda: len(services(etcd)) == 2 and services(etcd), "2 keys under /services/")
    ports = sorted(task["ports"]["http"] for task in cluster.running("api"))
    assert found == {
        f"/services/api/127.0.0.1:{port}": {"host": "host-a", "ipv4_addr": "127.0.0.1", "port": port}
        for port in ports
    }
    assert all(lease_of(etcd, key) != 0 for key in found)
    # Nothing under treeherd's own prefix looks like this: the keys are the seed's, at the root.
    assert etcdctl(etcd, "get", "--prefix", "/th/services", "--keys-only").strip() == ""

    # The agent refreshes its registrations: the leases are renewed past their TTL.
    time.sleep(2 * TTL_S)
    assert services(etcd) == found

    # An external registration (the secretary's way) expires in the registry: its key goes with it.
    with cluster.client() as client:
        client.request(
            "POST", "/api/v1/endpoints/web", EndpointRegister(address="10.1.2.3", port=80, ttl_s=2, host="h")
        )
    wait_for(lambda: "/services/web/10.1.2.3:80" in services(etcd), "the external key")
    assert services(etcd)["/services/web/10.1.2.3:80"] == {"host": "h", "ipv4_addr": "10.1.2.3", "port": 80}
    wait_for(
        lambda: "/services/web/10.1.2.3:80" not in services(etcd), "the external key expired", timeout_s=10
    )

    # A task that stops takes its key with it.
    with cluster.client() as client:
        client.request("PATCH", "/api/v1/services/api", ServiceUpdate(replicas=1))
    wait_for(lambda: len(services(etcd)) == 1, "one key left", timeout_s=10)
    (left,) = services(etcd)
    assert left in found

    # A manager killed renews nothing: etcd itself expires the keys one TTL later.
    cluster.manager.kill()
    killed = time.monotonic()
    assert list(services(etcd)) == [left]
    wait_for(lambda: services(etcd) == {}, "the keys expired in etcd", timeout_s=TTL_S + 5)
    assert time.monotonic() - killed > 0.5  # the lease ran out; nobody deleted the key at once
