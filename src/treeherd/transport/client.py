"""A small synchronous client of the manager's API, on the standard library's http.client.

The CLI (and later the ENC, which Puppet runs on every agent run) uses it: it imports in milliseconds,
keeps one connection alive, and turns every failure into `ClientError` with a message for a person.

It takes several managers (`http://a:7400,http://b:7400`, or a list): a manager that cannot be
connected to, or that answers 503 (stopping, or its store unreachable), is passed over for the next
one, and the one that answered is used first from then on. A request is sent again to another manager
only when the first one did not take it (no connection) or refused it whole (503).
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

import msgspec

from treeherd.model.errors import NoLeader
from treeherd.transport.credentials import (
    AUTH_HINT,
    DEFAULT_MANAGER,
    TLS_HINT,
    CredentialError,
    authorization,
    bearer_token,
    tls_context,
)

__all__ = ["DEFAULT_MANAGER", "Client", "ClientError", "manager_urls"]
DEFAULT_TIMEOUT = 30.0
NO_LEADER = NoLeader.code  # a manager's refusal while no manager leads
ELECTION_WAIT_S = 8.0  # how long a request waits for a new leader: a lease (3 s) and the catch-up
ELECTION_POLL_S = 0.25
T = TypeVar("T")
_encode = msgspec.json.Encoder().encode


class ClientError(Exception):
    """A request failed; `str()` says what happened and what to do."""

    def __init__(
        self, message: str, *, status: int | None = None, code: str | None = None, field: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.field = field


class Client:
    """Talks JSON to a manager: the first of `base_url` (a URL, several separated by commas, or a
    list) that answers."""

    def __init__(
        self,
        base_url: str | Sequence[str] = DEFAULT_MANAGER,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        token: str | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.urls = manager_urls(base_url)
        self._targets = [_target(url) for url in self.urls]
        self._current = 0
        self._timeout = timeout
        self._conn: http.client.HTTPConnection | None = None
        try:
            self._auth = authorization(token if token is not None else bearer_token(self.urls))
            needs_tls = any(scheme == "https" for scheme, _, _, _ in self._targets)
            self._tls = (tls or tls_context(self.urls)) if needs_tls else None
        except CredentialError as error:
            raise ClientError(str(error)) from None

    @property
    def base_url(self) -> str:
        """The manager in use: the one that answered last (the first one before any request)."""
        return self.urls[self._current]

    def _use(self, index: int) -> None:
        if index != self._current:
            self.close()
            self._current = index

    def _connection(self, timeout: float | None) -> http.client.HTTPConnection:
        if self._conn is None:
            scheme, host, port, _ = self._targets[self._current]
            if scheme == "https":
                self._conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=self._tls)
            else:
                self._conn = http.client.HTTPConnection(host, port, timeout=timeout)
        else:
            self._conn.timeout = timeout
            if self._conn.sock is not None:
                self._conn.sock.settimeout(timeout)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def abort(self) -> None:
        """Close the connection from another thread, waking a read blocked on it (a followed stream):
        `close()` alone does not interrupt a thread waiting in recv()."""
        conn = self._conn
        sock = conn.sock if conn is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _url(self, path: str, query: dict[str, Any] | None) -> str:
        url = self._targets[self._current][3] + path
        if query:
            pairs = [(k, _text(v)) for k, v in query.items() if v is not None and not isinstance(v, list)]
            pairs += [(k, _text(item)) for k, v in query.items() if isinstance(v, list) for item in v]
            if pairs:
                url += "?" + urllib.parse.urlencode(pairs)
        return url

    def _send(
        self,
        method: str,
        path: str,
        body: Any,
        query: dict[str, Any] | None,
        timeout: float | None,
        headers: dict[str, str] | None = None,
    ) -> http.client.HTTPResponse:
        """The answer of the first manager that takes the request, starting with the one in use."""
        payload = None if body is None else _encode(body)
        all_headers = {"Accept": "application/json", **self._auth, **(headers or {})}
        if payload is not None:
            all_headers["Content-Type"] = "application/json"
        # Managers between leaders refuse with `no_leader` before doing anything: ask again (all of
        # them) for up to ELECTION_WAIT_S, so that a failover costs a CLI call a pause, not an error.
        deadline = time.monotonic() + ELECTION_WAIT_S
        while True:
            try:
                return self._send_round(method, path, payload, all_headers, query, timeout)
            except ClientError as error:
                if error.code != NO_LEADER or time.monotonic() >= deadline:
                    raise
            time.sleep(ELECTION_POLL_S)

    def _send_round(
        self,
        method: str,
        path: str,
        payload: bytes | None,
        headers: dict[str, str],
        query: dict[str, Any] | None,
        timeout: float | None,
    ) -> http.client.HTTPResponse:
        """One pass over the managers, from the one in use: the first answer that is not a 503."""
        count = len(self.urls)
        start = self._current
        passed: list[str] = []  # the managers passed over, and why
        refusals: list[ClientError] = []
        for step in range(count):
            self._use((start + step) % count)
            try:
                response = self._send_one(method, path, payload, headers, query, timeout)
            except _Unreachable as error:
                passed.append(f"{self.base_url} ({error})")
                continue
            if response.status != 503:
                return response
            refused = _failure(503, response.read())
            refusals.append(refused)
            passed.append(f"{self.base_url} (503: {refused})")
            self.close()
        if len(refusals) == count:  # every manager answered, none could take it: the last one's reason
            raise refusals[-1]
        if count == 1:
            raise ClientError(
                f"cannot reach the treeherd manager at {passed[0]}: start it with 'treeherd up', or point"
                " --manager / TREEHERD_MANAGER at a running one"
            )
        codes = {refused.code for refused in refusals}
        raise ClientError(
            "no treeherd manager answered: " + ", ".join(passed) + "; check that one runs, or point"
            " --manager / TREEHERD_MANAGER at running ones",
            status=503 if refusals else None,
            code=NO_LEADER if codes == {NO_LEADER} else None,
        )

    def _send_one(
        self,
        method: str,
        path: str,
        payload: bytes | None,
        headers: dict[str, str],
        query: dict[str, Any] | None,
        timeout: float | None,
    ) -> http.client.HTTPResponse:
        """The answer of the manager in use; `_Unreachable` when it cannot be connected to (the request
        was not sent: another manager may take it)."""
        url = self._url(path, query)
        for attempt in (1, 2):
            conn = self._connection(timeout)
            if conn.sock is None:
                try:
                    conn.connect()
                except ssl.SSLCertVerificationError as error:
                    self.close()
                    raise ClientError(f"{TLS_HINT} ({error.verify_message})") from None
                except (OSError, socket.gaierror) as error:
                    self.close()
                    reason = "no answer in time" if isinstance(error, TimeoutError) else error.strerror
                    raise _Unreachable(reason or str(error)) from None
            try:
                conn.request(method, url, body=payload, headers=headers)
                return conn.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # A kept-alive connection the server closed: reconnect once.
                self.close()
                if attempt == 2:
                    raise ClientError(f"the manager at {self.base_url} closed the connection") from None
            except TimeoutError:
                self.close()
                raise ClientError(
                    f"the manager at {self.base_url} did not answer within {timeout} s"
                ) from None
            except ssl.SSLCertVerificationError as error:
                self.close()
                raise ClientError(f"{TLS_HINT} ({error.verify_message})") from None
            except OSError as error:
                self.close()
                raise ClientError(f"cannot talk to the manager at {self.base_url}: {error}") from None
        raise AssertionError("unreachable")

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: dict[str, Any] | None = None,
        *,
        type: Any = Any,
    ) -> Any:
        """Send one request (the body is any msgspec-encodable value); return the answer decoded as
        `type` (None for an empty answer)."""
        response = self._send(method, path, body, query, self._timeout)
        data = response.read()
        if response.status >= 400:
            raise _failure(response.status, data)
        if not data:
            return None
        try:
            return msgspec.json.decode(data, type=type)
        except msgspec.DecodeError as error:
            raise ClientError(f"unexpected answer from the manager at {self.base_url}: {error}") from None

    def get(self, path: str, type: type[T], **query: Any) -> T:
        result: T = self.request("GET", path, query=query, type=type)
        return result

    def stream_bytes(
        self, path: str, query: dict[str, Any] | None = None, read_timeout: float | None = None
    ) -> Iterator[bytes]:
        """Follow a plain byte stream (logs): yields what arrives until the server ends it."""
        response = self._send("GET", path, None, query, read_timeout, {"Accept": "text/plain"})
        if response.status >= 400:
            raise _failure(response.status, response.read())
        while True:
            try:
                chunk = response.read1(65536)
            except TimeoutError:
                self.close()
                raise ClientError(
                    f"the stream from {self.base_url} went silent for {read_timeout} s"
                ) from None
            if not chunk:
                self.close()  # a streamed answer leaves the connection unusable for the next request
                return
            yield chunk

    def stream(
        self,
        path: str,
        query: dict[str, Any] | None = None,
        last_event_id: int | None = None,
        read_timeout: float | None = None,
    ) -> Iterator[tuple[str, str, str | None]]:
        """Follow a Server-Sent Events stream: yields (event, data, id) until the server ends it.

        With `read_timeout`, a stream silent for longer (the server sends keepalives) raises ClientError.
        """
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        response = self._send("GET", path, None, query, read_timeout, headers)
        if response.status >= 400:
            raise _failure(response.status, response.read())
        event, event_id = "message", None
        data: list[str] = []
        while True:
            try:
                raw = response.readline()
            except TimeoutError:
                self.close()
                raise ClientError(
                    f"the event stream from {self.base_url} went silent for {read_timeout} s"
                ) from None
            if not raw:
                return
            line = raw.decode().rstrip("\r\n")
            if not line:
                if data:
                    yield event, "\n".join(data), event_id
                event, event_id = "message", None
                data = []
            elif line.startswith(":"):
                continue
            else:
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "event":
                    event = value
                elif name == "data":
                    data.append(value)
                elif name == "id":
                    event_id = value


class _Unreachable(Exception):
    """The manager in use could not be connected to; `str()` says why."""


def manager_urls(value: str | Sequence[str]) -> list[str]:
    """The managers named by `--manager` / TREEHERD_MANAGER: URLs separated by commas (or a list);
    `ClientError` for one that is not http(s)://HOST[:PORT]."""
    items = value.split(",") if isinstance(value, str) else list(value)
    urls = [item.strip() for item in items if item.strip()]
    if not urls:
        raise ClientError("no manager URL given: use http://HOST:PORT[,http://HOST:PORT...]")
    for url in urls:
        _target(url)
    return urls


def _target(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path prefix) of a manager URL."""
    parsed = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    try:
        port = parsed.port
    except ValueError:
        port = -1
    if parsed.scheme not in ("http", "https") or not parsed.hostname or port == -1:
        raise ClientError(f"invalid manager URL {url!r}: use http://HOST:PORT")
    return (
        parsed.scheme,
        parsed.hostname,
        port or (443 if parsed.scheme == "https" else 80),
        parsed.path.rstrip("/"),
    )


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _failure(status: int, data: bytes) -> ClientError:
    try:
        body = msgspec.json.decode(data)
    except msgspec.DecodeError:
        body = None
    if isinstance(body, dict) and "detail" in body:
        detail = str(body["detail"])
        if status == 401:
            detail = f"{detail}: {AUTH_HINT}"
        return ClientError(detail, status=status, code=body.get("error"), field=body.get("field"))
    text = data.decode(errors="replace").strip()[:200]
    return ClientError(f"the manager answered {status}: {text or 'no details'}", status=status)
