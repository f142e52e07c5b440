"""Registrations as etcd keys for fleet-era tools: which `/services/<service>/<ip>:<port>` keys to put,
renew or drop so that etcd holds exactly the live registrations.

Each registration (an `Endpoint` in the store, IPv4 as the seed's records are) is one key whose value is
the seed's JSON `{"host", "ipv4_addr", "port"}`, bound to an etcd lease of the registration's TTL: the
key is put with a new lease when it appears (or its value or TTL changes), the lease renewed each time
the registration is refreshed (its deadline moved later), and the lease revoked when it goes. Expiry is
etcd's: a manager that stops renewing leaves keys that vanish one TTL later.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import msgspec

from treeherd.model.discovery import Endpoint, RegistryEntry

SERVICES_PREFIX = "/services/"
RENEW_SLACK_S = 0.5  # a deadline moved by less than this is not a refresh


class KeyState(msgspec.Struct, frozen=True, kw_only=True):
    """A registration as a key: its value, its lease's TTL, and the registration's deadline (seconds
    on the caller's monotonic clock) when its lease was last granted or renewed."""

    value: bytes
    ttl_s: int
    due: float


class KeysPlan(msgspec.Struct, frozen=True, kw_only=True):
    put: list[str] = []  # a new lease, and the key put with it (replacing an older lease of that key)
    renew: list[str] = []  # the registration was refreshed: renew the key's lease
    drop: list[str] = []  # the registration is gone: revoke the key's lease (which deletes the key)


def registry_key(endpoint: Endpoint) -> str:
    return f"{SERVICES_PREFIX}{endpoint.service}/{endpoint.address}:{endpoint.port}"


def registry_value(endpoint: Endpoint) -> bytes:
    return msgspec.json.encode(
        RegistryEntry(host=endpoint.host, ipv4_addr=endpoint.address, port=endpoint.port)
    )


def wanted_keys(endpoints: Iterable[tuple[Endpoint, float]]) -> dict[str, KeyState]:
    """The keys of registrations (each with its deadline); IPv6 addresses have no place in the seed's
    records (`ipv4_addr`) and get no key."""
    wanted = {}
    for endpoint, due in endpoints:
        if ":" in endpoint.address:
            continue
        wanted[registry_key(endpoint)] = KeyState(
            value=registry_value(endpoint), ttl_s=max(1, math.ceil(endpoint.ttl_s)), due=due
        )
    return wanted


def plan_keys(wanted: Mapping[str, KeyState], held: Mapping[str, KeyState]) -> KeysPlan:
    """What to do so that the keys held become the keys wanted."""
    put, renew = [], []
    for key, state in wanted.items():
        current = held.get(key)
        if current is None or (current.value, current.ttl_s) != (state.value, state.ttl_s):
            put.append(key)
        elif state.due > current.due + RENEW_SLACK_S:
            renew.append(key)
    drop = [key for key in held if key not in wanted]
    return KeysPlan(put=sorted(put), renew=sorted(renew), drop=sorted(drop))
