"""The cluster CA's certificate and key and the join secrets, kept in etcd so that every manager on a
prefix signs with the same root and admits the same join tokens (SwarmKit keeps its root key in its raft
store the same way).

One key, `PREFIX/secrets/ca`, JSON of `model.security.SharedCa`. It is not a store object: it never appears in the event
stream, the API, `store snapshot` or `store migrate`. Whoever can read the etcd prefix can read the CA's
key, so etcd must be reachable by the managers alone (a private network, or etcd's own client
certificates).
"""

from __future__ import annotations

import msgspec

from treeherd.model.errors import Unavailable
from treeherd.model.security import SharedCa
from treeherd.store import etcd_client as etcd
from treeherd.store.etcd_layout import Layout


class SharedCaKey:
    """Reads and writes the shared CA key of one cluster; connects on first use, again after a failure."""

    def __init__(self, url: etcd.EtcdUrl) -> None:
        self._url = url
        self._key = Layout(url.prefix).secrets
        self._client: etcd.EtcdClient | None = None

    async def _connected(self) -> etcd.EtcdClient:
        if self._client is None:
            client = etcd.EtcdClient(self._url.endpoints)
            await client.connect()
            self._client = client
        return self._client

    async def _txn(self, compares: list[object], success: list[object], failure: list[object]) -> object:
        client = await self._connected()
        try:
            return await client.txn(compares, success, failure)
        except Unavailable:
            await self.close()  # the next call dials again, maybe another endpoint
            raise

    async def read(self) -> SharedCa | None:
        """The cluster's shared CA, or None when no manager has published one yet."""
        answer: object = await self._txn([], [etcd.get(self._key)], [])
        return _decoded(answer)

    async def publish(self, ca: SharedCa) -> SharedCa:
        """Publish `ca` unless one is there already; returns the one that is (the first manager's wins)."""
        answer: object = await self._txn(
            [etcd.compare(self._key, "create", 0)],
            [etcd.put(self._key, msgspec.json.encode(ca))],
            [etcd.get(self._key)],
        )
        if getattr(answer, "succeeded", False):
            return ca
        found = _decoded(answer)
        if found is None:
            raise Unavailable("the shared cluster CA vanished from etcd while it was being read: retry")
        return found

    async def write(self, ca: SharedCa) -> None:
        """Replace the shared CA (new join secrets)."""
        await self._txn([], [etcd.put(self._key, msgspec.json.encode(ca))], [])

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()


def _decoded(answer: object) -> SharedCa | None:
    for response in getattr(answer, "responses", ()):
        for kv in response.response_range.kvs:
            try:
                return msgspec.json.decode(kv.value, type=SharedCa)
            except msgspec.DecodeError as error:
                raise Unavailable(
                    f"the shared cluster CA in etcd is unreadable ({error}): restore the etcd key from a backup"
                ) from None
    return None
