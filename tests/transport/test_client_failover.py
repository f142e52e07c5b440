"""Several manager URLs: the CLI's client, the gateway's link and the ENC pass over a manager that is
down (or answers 503) for the next one, and keep using the one that answered."""

from __future__ import annotations

import http.server
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.conftest import Cli

from treeherd.cli import enc
from treeherd.gateway.manager_link import ManagerLink
from treeherd.model.requests import NodeCreate
from treeherd.model.routing import RoutingSnapshot
from treeherd.testing.ports import free_port
from treeherd.testing.processes import ManagerProcess
from treeherd.transport.client import Client, ClientError, manager_urls

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def managers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(the URL of a manager that was stopped, the URL of a running one)."""
    base = tmp_path_factory.mktemp("managers")
    stopped = ManagerProcess(base / "stopped").start()
    stopped_url = stopped.url
    stopped.stop()
    with ManagerProcess(base / "live") as live:
        yield stopped_url, live.url


class _Refusing(http.server.BaseHTTPRequestHandler):
    """A manager that cannot serve: 503 with treeherd's error body."""

    def do_GET(self) -> None:
        body = b'{"error":"unavailable","detail":"etcd is unreachable"}'
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def refusing() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_manager_urls_split_on_commas() -> None:
    assert manager_urls("http://a:7400, http://b:7400") == ["http://a:7400", "http://b:7400"]
    assert manager_urls(["http://a:7400"]) == ["http://a:7400"]
    with pytest.raises(ClientError, match="invalid manager URL 'ftp://a'"):
        manager_urls("http://a:7400,ftp://a")
    with pytest.raises(ClientError, match="no manager URL"):
        manager_urls(" , ")


def test_the_client_passes_over_a_stopped_manager_and_keeps_the_live_one(managers) -> None:
    stopped, live = managers
    with Client(f"{stopped},{live}") as client:
        assert client.base_url == stopped
        client.request("POST", "/api/v1/nodes", NodeCreate(path="failover"))
        assert client.base_url == live  # remembered: the next request goes there first
        assert "failover" in [node["path"] for node in client.get("/api/v1/nodes", list)]
        assert client.base_url == live


def test_every_manager_down_names_each_one(managers) -> None:
    stopped, _ = managers
    other = f"http://127.0.0.1:{free_port()}"
    with Client([stopped, other]) as client, pytest.raises(ClientError) as failed:
        client.get("/api/v1/nodes", list)
    assert f"no treeherd manager answered: {stopped} (" in str(failed.value)
    assert f"{other} (Connection refused)" in str(failed.value)


def test_a_manager_answering_503_is_passed_over(refusing, managers) -> None:
    _, live = managers
    with Client([refusing, live]) as client:
        client.get("/api/v1/nodes", list)
        assert client.base_url == live
    with Client([refusing]) as alone, pytest.raises(ClientError, match="etcd is unreachable") as failed:
        alone.get("/api/v1/nodes", list)
    assert failed.value.status == 503


def test_the_cli_takes_several_managers(managers) -> None:
    stopped, live = managers
    result = Cli(f"{stopped},{live}")("tree", "ls")
    assert result.returncode == 0


async def test_the_gateway_link_passes_over_a_stopped_manager(managers) -> None:
    stopped, live = managers
    link = ManagerLink(f"{stopped},{live}", "edge")
    assert link.manager_url == stopped
    snapshot = await link.snapshot()
    assert isinstance(snapshot, RoutingSnapshot)
    assert link.manager_url == live


def test_the_enc_passes_over_a_stopped_manager_and_remembers(managers, refusing, tmp_path: Path) -> None:
    stopped, live = managers
    with Client(live) as client:
        client.request("POST", "/api/v1/nodes", NodeCreate(path="enc"))
    cache = tmp_path / "cache"
    args = ["--cache-dir", str(cache), "--unknown", "default", "web-1.example"]
    result = subprocess.run(
        [*enc_command(), "--manager", f"{stopped},{refusing},{live}", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("---")
    assert (cache / ".manager").read_text().strip() == live
    assert enc._managers({"--manager": f"{stopped},{live}", "--cache-dir": str(cache)}) == [live, stopped]


def enc_command() -> list[str]:
    from treeherd.testing.processes import treeherd_command

    return [*treeherd_command(), "enc"]


class _Electing(http.server.BaseHTTPRequestHandler):
    """A manager between leaders for its first `refusals` requests (503 no_leader), then answering."""

    refusals = 0
    seen = 0

    def do_GET(self) -> None:
        type(self).seen += 1
        if type(self).seen <= type(self).refusals:
            status, body = 503, b'{"error":"no_leader","detail":"no manager leads now"}'
        else:
            status, body = 200, b"[]"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


def _electing(refusals: int) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = type("Electing", (_Electing,), {"refusals": refusals, "seen": 0})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def test_a_request_during_an_election_waits_for_the_new_leader(managers) -> None:
    stopped, _ = managers
    server, url = _electing(refusals=3)
    try:
        with Client([stopped, url], timeout=5) as client:  # one manager dead, the other electing
            assert client.get("/api/v1/nodes", list) == []
        assert server.RequestHandlerClass.seen == 4  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()


def test_an_election_that_does_not_end_is_an_error_in_bounded_time(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    import treeherd.transport.client as client_module

    monkeypatch.setattr(client_module, "ELECTION_WAIT_S", 1.0)
    server, url = _electing(refusals=10_000)
    try:
        started = time.monotonic()
        with Client(url, timeout=5) as client, pytest.raises(ClientError, match="no manager leads") as failed:
            client.get("/api/v1/nodes", list)
        assert failed.value.code == "no_leader" and failed.value.status == 503
        assert 1.0 <= time.monotonic() - started < 3.0
    finally:
        server.shutdown()
        server.server_close()
