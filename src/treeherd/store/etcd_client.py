"""The etcd v3 connection the etcd store uses: endpoints from a URL, ranges, transactions, one watch stream.

It speaks etcd's gRPC API through the `aetcd` package's channel and generated messages, calling the KV and
Watch services directly: the store needs ranges at a revision with paging, transactions of raw compares,
and watch responses whole (events of one revision arrive together), which aetcd's helpers do not offer.
One endpoint is used at a time; `connect` tries each in turn and names them all when none answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from aetcd import rpc
from aetcd.utils import prefix_range_end

from treeherd.model.errors import Compacted, InvalidInput, Unavailable

DEFAULT_PORT = 2379
DEFAULT_PREFIX = "/treeherd"
CALL_TIMEOUT = 5.0  # seconds for one request to etcd
PAGE = 1_000  # keys per range request when loading a prefix
# gRPC's default 4 MiB receive limit is less than a page of large objects or a watch response of a
# large revision; what etcd sends is bounded by etcd itself.
_CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 1 << 30), ("grpc.max_send_message_length", 1 << 30)]


@dataclass(frozen=True)
class EtcdUrl:
    """Where a cluster's data lives: etcd client endpoints and the key prefix under which it is kept."""

    endpoints: tuple[tuple[str, int], ...]
    prefix: str = DEFAULT_PREFIX
    max_txn_ops: int = 128  # etcd's --max-txn-ops
    max_request_bytes: int = 1_572_864  # etcd's --max-request-bytes

    def __str__(self) -> str:
        hosts = ",".join(f"{host}:{port}" for host, port in self.endpoints)
        return f"etcd://{hosts}?prefix={self.prefix}"


def parse_etcd_url(url: str) -> EtcdUrl:
    """`etcd://H1:2379,H2:2379[?prefix=/treeherd]` -> an `EtcdUrl`; a clear `InvalidInput` otherwise."""
    parts = urlsplit(url)
    if parts.scheme != "etcd" or not parts.netloc:
        raise InvalidInput(
            f"{url!r} is not an etcd URL: write etcd://HOST:PORT[,HOST:PORT...][?prefix=/treeherd]"
        )
    endpoints = []
    for item in parts.netloc.split(","):
        host, sep, port = item.rpartition(":")
        if not sep:
            host, port = item, str(DEFAULT_PORT)
        host = host.strip("[]")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidInput(f"{item!r} in {url!r} is not HOST:PORT (e.g. 127.0.0.1:2379)")
        endpoints.append((host, int(port)))
    query = parse_qs(parts.query)
    unknown = set(query) - {"prefix", "max-txn-ops", "max-request-bytes"}
    if unknown:
        raise InvalidInput(
            f"unknown option {sorted(unknown)[0]!r} in {url!r}: choose from prefix, max-txn-ops, max-request-bytes"
        )
    limits = {}
    for name, least in (("max-txn-ops", 4), ("max-request-bytes", 65_536)):
        if name in query:
            value = query[name][-1]
            if not value.isdigit() or int(value) < least:
                raise InvalidInput(
                    f"{name} in {url!r} must be a number of at least {least} (etcd's --{name})"
                )
            limits[name.replace("-", "_")] = int(value)
    prefix = query.get("prefix", [DEFAULT_PREFIX])[-1].rstrip("/")
    if not prefix.startswith("/") or len(prefix) < 2:
        raise InvalidInput(f"the prefix in {url!r} must be a key path such as /treeherd")
    return EtcdUrl(endpoints=tuple(endpoints), prefix=prefix, **limits)


def compare(key: bytes, target: str, value: int) -> Any:
    """An equality compare of a key's `mod` or `create` revision (0 for a key that does not exist)."""
    if target == "mod":
        return rpc.Compare(key=key, result=rpc.Compare.EQUAL, target=rpc.Compare.MOD, mod_revision=value)
    return rpc.Compare(key=key, result=rpc.Compare.EQUAL, target=rpc.Compare.CREATE, create_revision=value)


def put(key: bytes, value: bytes, lease: int = 0) -> Any:
    return rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value, lease=lease))


def delete(key: bytes) -> Any:
    return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key))


def get(key: bytes) -> Any:
    return rpc.RequestOp(request_range=rpc.RangeRequest(key=key))


class EtcdClient:
    """A connection to one of a cluster's endpoints."""

    def __init__(self, endpoints: Sequence[tuple[str, int]]) -> None:
        self.endpoints = list(endpoints)
        self.endpoint: tuple[str, int] | None = None
        self._channel: Any = None
        self._kv: Any = None
        self._watch_stub: Any = None
        self._lease_stub: Any = None
        self._retiring: set[asyncio.Task[None]] = set()  # old channels closing after a reconnect

    async def connect(self) -> None:
        """Use the first endpoint that answers; `Unavailable` naming every endpoint tried otherwise."""
        failures = []
        for host, port in self.endpoints:
            channel = rpc.insecure_channel(f"{host}:{port}", options=_CHANNEL_OPTIONS)
            kv = rpc.KVStub(channel)
            try:
                await kv.Range(rpc.RangeRequest(key=b"\0", limit=1), timeout=2.0)
            except rpc.AioRpcError as error:
                await channel.close()
                failures.append(f"{host}:{port} ({_reason(error)})")
                continue
            if self._channel is not None:
                # Calls in flight on the old channel finish (or time out) before it closes.
                retiring = asyncio.create_task(self._channel.close(grace=CALL_TIMEOUT))
                self._retiring.add(retiring)
                retiring.add_done_callback(self._retiring.discard)
            self._channel, self._kv = channel, kv
            self._watch_stub = rpc.WatchStub(channel)
            self._lease_stub = rpc.LeaseStub(channel)
            self.endpoint = (host, port)
            return
        raise Unavailable(
            "cannot reach etcd at any of " + ", ".join(failures) + ": check that etcd runs and that"
            " --store names its client URLs (etcd's --advertise-client-urls)"
        )

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
        self._channel = self._kv = self._watch_stub = self._lease_stub = None
        for retiring in list(self._retiring):
            retiring.cancel()

    def _kv_stub(self) -> Any:
        if self._kv is None:
            raise Unavailable("the etcd connection is closed")
        return self._kv

    async def range_prefix(self, prefix: bytes, revision: int = 0) -> tuple[int, list[Any]]:
        """Every key under `prefix` at `revision` (0: now), paged; returns the revision read and the kvs."""
        end = prefix_range_end(prefix)
        start = prefix
        kvs: list[Any] = []
        while True:
            request = rpc.RangeRequest(key=start, range_end=end, limit=PAGE, revision=revision)
            response = await _call(self._kv_stub().Range(request, timeout=CALL_TIMEOUT))
            revision = revision or response.header.revision
            kvs.extend(response.kvs)
            if not response.more or not response.kvs:
                return revision, kvs
            start = response.kvs[-1].key + b"\0"

    async def txn(self, compares: list[Any], success: list[Any], failure: Sequence[Any] = ()) -> Any:
        """One transaction; the raw `TxnResponse` (its `succeeded`, `header.revision`, `responses`)."""
        request = rpc.TxnRequest(compare=compares, success=success, failure=list(failure))
        return await _call(self._kv_stub().Txn(request, timeout=CALL_TIMEOUT))

    # ---- leases ---------------------------------------------------------------------------------
    def _leases(self) -> Any:
        if self._lease_stub is None:
            raise Unavailable("the etcd connection is closed")
        return self._lease_stub

    async def lease_grant(self, ttl: int) -> int:
        """A new lease of `ttl` seconds; its id."""
        response = await _call(
            self._leases().LeaseGrant(rpc.LeaseGrantRequest(TTL=ttl), timeout=CALL_TIMEOUT)
        )
        if response.error:
            raise Unavailable(f"etcd refused a lease: {response.error}")
        return int(response.ID)

    async def lease_revoke(self, lease: int) -> None:
        """Revoke a lease, deleting its keys; a lease etcd no longer has is already gone."""
        try:
            await _call(self._leases().LeaseRevoke(rpc.LeaseRevokeRequest(ID=lease), timeout=CALL_TIMEOUT))
        except InvalidInput:
            pass
        except Unavailable as error:
            if "not found" not in str(error):
                raise

    async def lease_keepalive(self, leases: Sequence[int]) -> dict[int, int]:
        """Renew leases (on one stream); each one's TTL now, 0 for a lease etcd no longer has."""
        if not leases:
            return {}
        requests = [rpc.LeaseKeepAliveRequest(ID=lease) for lease in leases]

        async def send() -> AsyncIterator[Any]:
            for request in requests:
                yield request

        call = self._leases().LeaseKeepAlive(send(), timeout=CALL_TIMEOUT)
        ttls: dict[int, int] = {}
        try:
            async for response in call:
                ttls[int(response.ID)] = int(response.TTL)
                if len(ttls) == len(set(leases)):
                    break
        except asyncio.CancelledError:
            raise
        except rpc.AioRpcError as error:
            raise Unavailable(f"etcd did not renew the leases ({_reason(error)})") from None
        finally:
            call.cancel()
        return {lease: ttls.get(lease, 0) for lease in leases}

    async def compact(self, revision: int) -> None:
        await _call(self._kv_stub().Compact(rpc.CompactionRequest(revision=revision), timeout=CALL_TIMEOUT))

    async def watch(
        self, prefix: bytes, start_revision: int, *, prev_kv: bool = False
    ) -> AsyncGenerator[Any, None]:
        """Watch responses for `prefix` from `start_revision` on (each holds whole revisions); raises
        `Compacted` if etcd compacted past `start_revision`, `Unavailable` when the stream breaks."""
        if self._watch_stub is None:
            raise Unavailable("the etcd connection is closed")
        create = rpc.WatchCreateRequest(
            key=prefix, range_end=prefix_range_end(prefix), start_revision=start_revision, prev_kv=prev_kv
        )
        stop = asyncio.Event()

        async def requests() -> AsyncIterator[Any]:
            yield rpc.WatchRequest(create_request=create)
            await stop.wait()

        call = self._watch_stub.Watch(requests())
        try:
            async for response in call:
                if response.compact_revision:
                    raise Compacted(
                        f"etcd compacted its history through revision {response.compact_revision - 1}:"
                        " list the objects again and watch from the current revision",
                        oldest=response.compact_revision - 1,
                    )
                if response.canceled:
                    raise Unavailable(
                        f"etcd cancelled the watch: {response.cancel_reason or 'no reason given'}"
                    )
                if response.events:
                    yield response
        except rpc.AioRpcError as error:
            raise Unavailable(f"the etcd watch stream broke ({_reason(error)})") from None
        finally:
            stop.set()
            call.cancel()
        raise Unavailable("etcd ended the watch stream")


async def _call(awaitable: Any) -> Any:
    try:
        return await awaitable
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # this task is being cancelled
        # gRPC cancels the calls of a channel that closes under them: not a cancellation of ours.
        raise Unavailable("the connection to etcd closed during the request") from None
    except rpc.AioRpcError as error:
        code = error.code()
        if code == rpc.StatusCode.INVALID_ARGUMENT:
            raise InvalidInput(f"etcd refused the request: {error.details()}") from None
        if code == rpc.StatusCode.OUT_OF_RANGE and "compacted" in (error.details() or ""):
            raise Compacted(f"etcd {error.details()}: list the objects again", oldest=0) from None
        raise Unavailable(f"etcd did not answer ({_reason(error)})") from None


def _reason(error: Any) -> str:
    """A short reason for a failed call: gRPC's details are long and repeat the address."""
    details = error.details() or ""
    if "Connection refused" in details:
        return "connection refused"
    if error.code() == rpc.StatusCode.DEADLINE_EXCEEDED:
        return "no answer in time"
    return f"{error.code().name.lower()}: {details}"
