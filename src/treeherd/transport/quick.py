"""One plain HTTP GET for short-lived processes that must start fast (the ENC runs on every Puppet run).

It imports only `socket` (http.client pulls in the email package, ~10-20 ms at start-up). The request
is HTTP/1.0 with `Connection: close`, so the answer is the rest of the stream: no chunking, no
keep-alive. `https://` URLs are not handled here (callers use `transport.client` for them).
"""

from __future__ import annotations

import socket

__all__ = ["QuickError", "get", "split_url"]

MAX_ANSWER = 16 * 1024 * 1024


class QuickError(Exception):
    """The server could not be reached or did not answer in HTTP; `str()` says what happened."""


def split_url(url: str) -> tuple[str, int, str]:
    """`http://host:port/prefix` -> (host, port, prefix without a trailing slash)."""
    rest = url.removeprefix("http://") if "://" in url else url
    if "://" in rest:
        raise QuickError(f"unsupported manager URL {url!r}: use http://HOST:PORT")
    hostport, slash, prefix = rest.partition("/")
    host, port = hostport, 80
    if hostport.startswith("["):  # [::1]:7400
        host, _, tail = hostport[1:].partition("]")
        if tail.startswith(":"):
            port = _port(tail[1:], url)
    elif ":" in hostport:
        host, _, number = hostport.rpartition(":")
        port = _port(number, url)
    if not host:
        raise QuickError(f"invalid manager URL {url!r}: use http://HOST:PORT")
    return host, port, (slash + prefix).rstrip("/")


def _port(text: str, url: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise QuickError(f"invalid port in manager URL {url!r}")
    return int(text)


def get(
    url: str, path: str, *, timeout: float, accept: str = "application/json", token: str | None = None
) -> tuple[int, bytes]:
    """GET `path` (already quoted) from the server at `url`: the status and the body."""
    host, port, prefix = split_url(url)
    authorization = f"Authorization: Bearer {token}\r\n" if token else ""
    request = (
        f"GET {prefix}{path} HTTP/1.0\r\nHost: {host}:{port}\r\nAccept: {accept}\r\n{authorization}"
        "Connection: close\r\nUser-Agent: treeherd\r\n\r\n"
    ).encode()
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(request)
            chunks: list[bytes] = []
            size = 0
            while chunk := sock.recv(65536):
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_ANSWER:
                    raise QuickError(f"the answer from {url} is larger than {MAX_ANSWER} bytes")
    except TimeoutError:
        raise QuickError(f"{url} did not answer within {timeout:g} s") from None
    except OSError as error:
        raise QuickError(f"cannot reach {url} ({error.strerror or error})") from None
    return _parse(b"".join(chunks), url)


def _parse(data: bytes, url: str) -> tuple[int, bytes]:
    head, separator, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.split(b"\r\n")
    parts = status_line.split(b" ", 2)
    if not separator or len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise QuickError(f"{url} did not answer in HTTP")
    for line in header_lines:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            expected = int(value.strip() or b"0")
            if len(body) < expected:
                raise QuickError(f"the answer from {url} was cut short ({len(body)} of {expected} bytes)")
            body = body[:expected]
    return int(parts[1]), body
