"""A real manager process: durability across restarts and crashes, the resumable event stream,
optimistic concurrency over HTTP, and clear start-up failures."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import pytest

from treeherd.model.requests import MachineCreate, NodeCreate, NodeUpdate
from treeherd.testing.processes import ManagerProcess, treeherd_command
from treeherd.transport.client import Client, ClientError

STREAM_TIMEOUT = 10.0


def _events(
    url: str,
    *,
    since: int | None = None,
    last_event_id: int | None = None,
    count: int,
    kinds: list[str] | None = None,
) -> list[tuple[str, dict, str | None]]:
    """Read `count` change events from the stream (bounded by STREAM_TIMEOUT per read)."""
    client = Client(url)
    found: list[tuple[str, dict, str | None]] = []
    try:
        query = {"since": since, "kind": kinds or [], "keepalive": 0.2}
        for event, data, event_id in client.stream(
            "/api/v1/events", query, last_event_id=last_event_id, read_timeout=STREAM_TIMEOUT
        ):
            if event in ("created", "updated", "deleted"):
                found.append((event, json.loads(data), event_id))
                if len(found) == count:
                    break
    finally:
        client.close()
    return found


def _seed(client: Client, prefix: str, count: int) -> None:
    client.request("POST", "/api/v1/nodes", NodeCreate(path=prefix))
    for index in range(count):
        client.request(
            "POST", "/api/v1/nodes", NodeCreate(path=f"{prefix}.n{index}", labels={"i": str(index)})
        )


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_writes_survive_a_restart(tmp_path: Path, how: str) -> None:
    data = tmp_path / "data"
    with ManagerProcess(data) as first:
        client = Client(first.url)
        _seed(client, "corp", 20)
        client.request("POST", "/api/v1/machines", MachineCreate(hostname="web-01", ips=["127.0.0.11"]))
        before = client.get("/api/v1/nodes", list)
        revision = client.get("/healthz", dict)["revision"]
        client.close()
        if how == "sigkill":
            first.kill()
    with ManagerProcess(data) as second:
        client = Client(second.url)
        assert client.get("/api/v1/nodes", list) == before
        assert client.get("/api/v1/machines/web-01", dict)["ips"] == ["127.0.0.11"]
        assert client.get("/healthz", dict)["revision"] == revision
        created = client.request("POST", "/api/v1/nodes", NodeCreate(path="corp.after"))
        assert created["version"] == revision + 1
        client.close()


def test_event_stream_is_live_and_marks_revisions(manager: ManagerProcess) -> None:
    client = Client(manager.url)
    client.request("POST", "/api/v1/nodes", NodeCreate(path="corp"))
    start = client.get("/healthz", dict)["revision"]
    client.request("POST", "/api/v1/nodes", NodeCreate(path="corp.web"))
    client.request("PATCH", "/api/v1/nodes/corp.web", NodeUpdate(labels={"tier": "web"}))
    client.request("DELETE", "/api/v1/nodes/corp", query={"recursive": True})
    events = _events(manager.url, since=start, count=4)
    assert [(e[0], e[1]["object"]["path"]) for e in events] == [
        ("created", "corp.web"),
        ("updated", "corp.web"),
        ("deleted", "corp.web"),
        ("deleted", "corp"),
    ]
    # the recursive delete is one transaction: one revision, and only its last event carries the id
    assert events[2][1]["revision"] == events[3][1]["revision"]
    assert events[2][2] is None and events[3][2] == str(events[3][1]["revision"])
    client.close()


def test_stream_filters_by_kind(manager: ManagerProcess) -> None:
    client = Client(manager.url)
    client.request("POST", "/api/v1/nodes", NodeCreate(path="corp"))
    client.request("POST", "/api/v1/machines", MachineCreate(hostname="m1"))
    client.request("POST", "/api/v1/machines", MachineCreate(hostname="m2"))
    events = _events(manager.url, since=0, count=2, kinds=["machine"])
    assert [e[1]["object"]["hostname"] for e in events] == ["m1", "m2"]
    client.close()


def test_stream_resumes_across_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with ManagerProcess(data) as first:
        client = Client(first.url)
        _seed(client, "corp", 3)
        events = _events(first.url, since=0, count=4)
        resume_from = int(events[1][2])  # a client saw two transactions, then lost its connection
        client.close()
    with ManagerProcess(data) as second:
        client = Client(second.url)
        client.request("POST", "/api/v1/nodes", NodeCreate(path="corp.late"))
        resumed = _events(second.url, last_event_id=resume_from, count=3)
        assert [e[1]["object"]["path"] for e in resumed] == ["corp.n1", "corp.n2", "corp.late"]
        assert all(e[1]["revision"] > resume_from for e in resumed)
        client.close()


def test_stale_version_is_a_conflict(manager: ManagerProcess) -> None:
    client = Client(manager.url)
    node = client.request("POST", "/api/v1/nodes", NodeCreate(path="corp"))
    client.request("PATCH", "/api/v1/nodes/corp", NodeUpdate(version=node["version"], labels={"a": "1"}))
    with pytest.raises(ClientError) as stale:
        client.request("PATCH", "/api/v1/nodes/corp", NodeUpdate(version=node["version"], labels={"a": "2"}))
    assert stale.value.status == 409 and stale.value.code == "conflict" and stale.value.field == "version"
    assert client.get("/api/v1/nodes/corp", dict)["labels"] == {"a": "1"}
    client.close()


def test_resume_from_a_future_or_negative_revision(manager: ManagerProcess) -> None:
    client = Client(manager.url)
    with pytest.raises(ClientError) as negative:
        next(client.stream("/api/v1/events", {"since": -1}, read_timeout=STREAM_TIMEOUT))
    assert negative.value.status == 400 and negative.value.field == "since"
    client.close()


def test_one_manager_per_data_dir(manager: ManagerProcess) -> None:
    second = subprocess.run(
        [*treeherd_command(), "manager", "--data-dir", str(manager.data_dir), "--listen", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert second.returncode == 1
    assert f"in use by treeherd pid {manager.pid}" in second.stderr
    assert "Traceback" not in second.stderr


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                *treeherd_command(),
                "manager",
                "--data-dir",
                str(tmp_path / "d"),
                "--listen",
                f"127.0.0.1:{port}",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 1
    assert "address already in use" in result.stderr.lower() and "--listen" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_listen_address(tmp_path: Path) -> None:
    result = subprocess.run(
        [*treeherd_command(), "manager", "--data-dir", str(tmp_path / "d"), "--listen", "localhost"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1 and "HOST:PORT" in result.stderr


def test_up_loads_the_demo_only_into_an_empty_store(tmp_path: Path) -> None:
    with ManagerProcess(tmp_path / "demo", command=("up",), extra_args=("--demo",)) as up:
        client = Client(up.url)
        paths = [n["path"] for n in client.get("/api/v1/nodes", list)]
        assert "corp.web.api" in paths and len(paths) >= 5
        assert client.get("/api/v1/machines", list) and client.get("/api/v1/domains", list)
        client.close()
    data = tmp_path / "mine"
    with ManagerProcess(data) as plain, Client(plain.url) as client:
        client.request("POST", "/api/v1/nodes", NodeCreate(path="mine"))
    with ManagerProcess(data, command=("up",), extra_args=("--demo",)) as again, Client(again.url) as client:
        assert [n["path"] for n in client.get("/api/v1/nodes", list)] == ["mine"]
