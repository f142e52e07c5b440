"""What the gateway's end-to-end tests share: backend processes, a gateway process with its own nginx,
plain HTTP requests through nginx, and a webhook receiver. Everything on loopback, stopped by pid."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from treeherd.testing.processes import GatewayProcess
from treeherd.transport.client import Client

BACKEND_SCRIPT = Path(__file__).with_name("backend_server.py")
STOP_S = 10.0


class Backend:
    """A backend process on `host:port` that fails (500) while its fail file exists."""

    def __init__(self, tmp: Path, name: str, host: str, port: int) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.fail_file = tmp / f"{name}.fail"
        self.process = subprocess.Popen(
            [sys.executable, str(BACKEND_SCRIPT), "--host", host, "--port", str(port), "--name", name,
             "--fail-file", str(self.fail_file)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip

    def ready(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), timeout=0.5):
            return True
        return False

    def fail(self, failing: bool) -> None:
        if failing:
            self.fail_file.touch()
        else:
            self.fail_file.unlink(missing_ok=True)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(STOP_S)


def route_one_backend(client: Client, host: str, domain_port: int, node_port: int) -> None:
    """Through the API: domain `host` on `domain_port`, its `/` routed to node `shop` on `node_port`, whose
    one machine is web-7 at 127.0.0.7 (where a `Backend` listens)."""
    client.request("POST", "/api/v1/domains", {"name": host, "ports": [{"port": domain_port}]})
    client.request("POST", "/api/v1/nodes", {"path": "shop", "port": node_port})
    client.request("POST", "/api/v1/nodes/shop/routes", {"domain": host, "uri": "/"})
    client.request("POST", "/api/v1/machines", {"hostname": "web-7", "ips": ["127.0.0.7"]})
    client.request("POST", "/api/v1/machines/web-7/bindings", {"node": "shop", "weight": 1})


def get(port: int, path: str, host: str) -> tuple[int, dict[str, Any] | None]:
    """GET through nginx on 127.0.0.1:port with a Host header; (status, JSON body or None)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Host": host, "Connection": "close"})
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    try:
        return response.status, json.loads(data)
    except ValueError:
        return response.status, None


def served_by(port: int, path: str, host: str) -> str | None:
    """The backend that answered, or None (an error status, or nginx not listening yet)."""
    try:
        status, body = get(port, path, host)
    except OSError:
        return None
    return body["name"] if status == 200 and body else None


class WebhookReceiver:
    """A local HTTP server that keeps every JSON body POSTed to it."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                received.append(json.loads(self.rfile.read(length)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(STOP_S)


__all__ = ["Backend", "GatewayProcess", "WebhookReceiver", "get", "served_by"]
