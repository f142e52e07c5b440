"""The registry of object kinds: each kind's type, unique keys, indexes and references to other kinds.

The store enforces what is declared here for every write, whichever backend holds the data:
- a unique key (a node's path, a machine's hostname, a route's `{domain, uri}`) is held by one object;
- a reference (a node's parent, a binding's machine) must name an existing object, and an object that is
  still referenced cannot be deleted.
An index (an endpoint's service) only files objects under its keys so that they are read without a scan:
any number of objects share a key, and a key names nothing (no check, nothing refused). A tally keeps
only how many objects hold each key (a service's running tasks), read in constant time.
Key functions may return several keys (a node holds one route key per `domain_uris` entry), or none.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

import msgspec

from treeherd.model.base import Object
from treeherd.model.discovery import Endpoint, endpoint_key
from treeherd.model.gateway import BackendState, GatewayRecord, HealthPolicy
from treeherd.model.objects import AnyObject, Binding, Domain, Machine, ProvisioningRecord, TreeNode
from treeherd.model.proxies import ProxyRecord
from treeherd.model.puppet import PuppetCatalog, PuppetConflict
from treeherd.model.security import ApiToken, AuditLog, JoinedKey, RevokedNode, UserCertificate
from treeherd.model.services import ClusterSettings, Service, Task
from treeherd.model.states import TaskState

T = TypeVar("T", bound=Object)


class UniqueKey(msgspec.Struct, frozen=True):
    """A named unique index: `keys(obj)` lists the values only this object may hold."""

    name: str
    keys: Callable[[AnyObject], Iterable[str]]


class Index(msgspec.Struct, frozen=True):
    """A named non-unique index: `keys(obj)` lists the values the object is filed under (read with
    `View.where`). Objects may share a value; nothing is checked or refused."""

    name: str
    keys: Callable[[AnyObject], Iterable[str]]


class Tally(msgspec.Struct, frozen=True):
    """A named count: `keys(obj)` lists the values the object is counted under (read with
    `View.tally`). Only the number of objects per value is kept, not which ones: a summary that would
    otherwise walk every task of a service (its running count) reads one integer."""

    name: str
    keys: Callable[[AnyObject], Iterable[str]]


class Reference(msgspec.Struct, frozen=True):
    """A named reference from objects of one kind to objects of `target` kind."""

    name: str
    target: str
    ids: Callable[[AnyObject], Iterable[str]]


class KindInfo(msgspec.Struct, frozen=True):
    """What the store needs to know about one kind."""

    name: str
    type: type[Object]
    unique: tuple[UniqueKey, ...] = ()
    indexes: tuple[Index, ...] = ()
    references: tuple[Reference, ...] = ()
    tallies: tuple[Tally, ...] = ()


def _one(value: str | None) -> Iterable[str]:
    return () if value is None else (value,)


def _as(cls: type[T], obj: AnyObject) -> T:
    """Narrow a stored object to its kind's type (the registry only hands each kind its own objects)."""
    assert isinstance(obj, cls)
    return obj


def _agent_state(machine: Machine) -> Iterable[str]:
    """A machine with an agent counts under its agent's state (ready, down, unknown)."""
    return () if machine.agent is None else (machine.agent.state,)


# A module constant: an enum member read through its class costs ten times as much, and these two run
# on every write of a task (and its rollback and replay).
_RUNNING = TaskState.RUNNING


def _desired_under(task: Task) -> Iterable[str]:
    """A task meant to run (not yet told to stop) counts towards its service's desired tasks."""
    return (task.service_id,) if task.desired_state <= _RUNNING else ()


def _running_under(task: Task) -> Iterable[str]:
    """A task meant to run that runs counts towards its service's running tasks."""
    if task.status.state == _RUNNING and task.desired_state <= _RUNNING:
        return (task.service_id,)
    return ()


def route_key(domain_id: str, uri: str) -> str:
    """The unique key of a route: one node per `{domain, uri}`."""
    return f"{domain_id} {uri}"


def binding_key(machine_id: str, node_id: str) -> str:
    """The unique key of a binding: a machine is bound to a node at most once."""
    return f"{machine_id} {node_id}"


KINDS: dict[str, KindInfo] = {
    info.name: info
    for info in (
        KindInfo(
            name="node",
            type=TreeNode,
            unique=(
                UniqueKey("path", lambda o: (_as(TreeNode, o).path,)),
                UniqueKey(
                    "route", lambda o: [route_key(d.domain_id, d.uri) for d in _as(TreeNode, o).domain_uris]
                ),
            ),
            references=(
                Reference("parent", "node", lambda o: _one(_as(TreeNode, o).parent_id)),
                Reference(
                    "route_domain", "domain", lambda o: {d.domain_id for d in _as(TreeNode, o).domain_uris}
                ),
            ),
        ),
        KindInfo(
            name="machine",
            type=Machine,
            unique=(
                UniqueKey("hostname", lambda o: (_as(Machine, o).hostname,)),
                UniqueKey("node_identity", lambda o: _one(_as(Machine, o).node_identity)),
            ),
            tallies=(Tally("agent_state", lambda o: _agent_state(_as(Machine, o))),),
        ),
        KindInfo(
            name="binding",
            type=Binding,
            unique=(
                UniqueKey(
                    "pair", lambda o: (binding_key(_as(Binding, o).machine_id, _as(Binding, o).node_id),)
                ),
            ),
            references=(
                Reference("machine", "machine", lambda o: (_as(Binding, o).machine_id,)),
                Reference("node", "node", lambda o: (_as(Binding, o).node_id,)),
            ),
        ),
        KindInfo(
            name="domain",
            type=Domain,
            unique=(UniqueKey("name", lambda o: (_as(Domain, o).name,)),),
        ),
        KindInfo(
            name="provision",
            type=ProvisioningRecord,
            unique=(UniqueKey("hostname", lambda o: (_as(ProvisioningRecord, o).hostname,)),),
            references=(Reference("node", "node", lambda o: (_as(ProvisioningRecord, o).node_id,)),),
        ),
        KindInfo(
            name="service",
            type=Service,
            unique=(UniqueKey("name", lambda o: (_as(Service, o).name,)),),
            references=(Reference("node", "node", lambda o: (_as(Service, o).node_id,)),),
        ),
        KindInfo(
            name="task",
            type=Task,
            references=(
                Reference("service", "service", lambda o: (_as(Task, o).service_id,)),
                Reference("machine", "machine", lambda o: _one(_as(Task, o).machine_id)),
            ),
            # The task kind holds tasks only (see `_as`): no check per call on this hot path.
            tallies=(
                Tally("running", _running_under),  # type: ignore[arg-type]
                Tally("desired", _desired_under),  # type: ignore[arg-type]
            ),
        ),
        KindInfo(
            name="cluster",
            type=ClusterSettings,
            unique=(UniqueKey("name", lambda o: (_as(ClusterSettings, o).name,)),),
        ),
        KindInfo(
            name="puppet_catalog",
            type=PuppetCatalog,
            unique=(UniqueKey("name", lambda o: (_as(PuppetCatalog, o).name,)),),
        ),
        # No reference to the machine: a conflict record never blocks removing a machine (the ENC
        # deletes it once the host no longer conflicts).
        KindInfo(
            name="puppet_conflict",
            type=PuppetConflict,
            unique=(UniqueKey("hostname", lambda o: (_as(PuppetConflict, o).hostname,)),),
        ),
        # The gateway's kinds declare no references: a node or machine that goes leaves its backend
        # state and policy behind, ignored by the renderer, instead of being refused deletion.
        KindInfo(
            name="backend",
            type=BackendState,
            unique=(
                UniqueKey(
                    "pair",
                    lambda o: (binding_key(_as(BackendState, o).machine_id, _as(BackendState, o).node_id),),
                ),
            ),
        ),
        KindInfo(
            name="policy",
            type=HealthPolicy,
            unique=(UniqueKey("node", lambda o: (_as(HealthPolicy, o).node_id,)),),
        ),
        KindInfo(
            name="gateway",
            type=GatewayRecord,
            unique=(UniqueKey("name", lambda o: (_as(GatewayRecord, o).name,)),),
        ),
        # No reference to the machine: a host's proxy record never blocks removing the machine.
        KindInfo(
            name="token",
            type=ApiToken,
            unique=(UniqueKey("name", lambda o: (_as(ApiToken, o).name,)),),
        ),
        KindInfo(
            name="revoked_node",
            type=RevokedNode,
            unique=(UniqueKey("node_identity", lambda o: (_as(RevokedNode, o).node_identity,)),),
        ),
        KindInfo(
            name="joined_key",
            type=JoinedKey,
            unique=(UniqueKey("key_sha256", lambda o: (_as(JoinedKey, o).key_sha256,)),),
        ),
        KindInfo(
            name="user_cert",
            type=UserCertificate,
            unique=(UniqueKey("serial", lambda o: (_as(UserCertificate, o).serial,)),),
            indexes=(Index("name", lambda o: (_as(UserCertificate, o).name,)),),
        ),
        KindInfo(
            name="audit",
            type=AuditLog,
            unique=(UniqueKey("name", lambda o: (_as(AuditLog, o).name,)),),
        ),
        KindInfo(
            name="proxy",
            type=ProxyRecord,
            unique=(UniqueKey("hostname", lambda o: (_as(ProxyRecord, o).hostname,)),),
        ),
        # No references: a registration outlives nothing it names (its task or machine may go first;
        # the TTL or its agent removes it). Indexes instead: a service's endpoints are read on every
        # lookup and dependency feed, a machine's whenever its agent reports them.
        KindInfo(
            name="endpoint",
            type=Endpoint,
            unique=(
                UniqueKey(
                    "address",
                    lambda o: (
                        endpoint_key(
                            _as(Endpoint, o).service, _as(Endpoint, o).address, _as(Endpoint, o).port
                        ),
                    ),
                ),
            ),
            indexes=(
                Index("service", lambda o: (_as(Endpoint, o).service,)),
                Index("machine", lambda o: _one(_as(Endpoint, o).machine_id)),
            ),
        ),
    )
}


def kind_of(obj: Object) -> KindInfo:
    """The registry entry of an object's kind."""
    return KINDS[type(obj).kind]
