"""The gateway's small outbound HTTP calls: probing an ejected backend and posting alert webhooks.

Both are bounded by a timeout and never raise: a probe answers whether the backend served the request
(any status under 500), a webhook whether the receiver accepted the POST (2xx).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import urllib.parse
from typing import Any

import msgspec

log = logging.getLogger(__name__)
PROBE_TIMEOUT_S = 2.0
WEBHOOK_TIMEOUT_S = 5.0


async def _http(host: str, port: int, request: bytes, limit_s: float) -> int | None:
    """Send one HTTP/1.0 request; the status code, or None when there was no valid answer."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(limit_s):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(request)
            await writer.drain()
            status_line = await reader.readline()
            parts = status_line.split()
            return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None
    except (OSError, TimeoutError, ValueError):
        return None
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()


async def probe(address: str, port: int, path: str, host_header: str) -> bool:
    """Does the backend at address:port answer GET `path` with a status under 500?"""
    request = (
        f"GET {path} HTTP/1.0\r\nHost: {host_header}\r\nUser-Agent: treeherd-gateway-probe\r\n\r\n".encode()
    )
    status = await _http(address, port, request, PROBE_TIMEOUT_S)
    return status is not None and status < 500


async def post_webhook(url: str, payload: Any) -> bool:
    """POST `payload` as JSON to `url` (http only: the gateway speaks plain HTTP on its network)."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme != "http" or not parsed.hostname:
        log.warning("webhook %s skipped: only http:// URLs are supported", url)
        return False
    body = msgspec.json.encode(payload)
    target = (parsed.path or "/") + (f"?{parsed.query}" if parsed.query else "")
    host = parsed.hostname if parsed.port is None else f"{parsed.hostname}:{parsed.port}"
    request = (
        f"POST {target} HTTP/1.0\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nUser-Agent: treeherd-gateway\r\n\r\n"
    ).encode() + body
    status = await _http(parsed.hostname, parsed.port or 80, request, WEBHOOK_TIMEOUT_S)
    if status is None or not 200 <= status < 300:
        log.warning("webhook %s answered %s", url, status)
        return False
    return True
