"""The stored objects of the service tree: nodes, machines, bindings, domains, provisioning records
(and, from model.services, services, tasks and the cluster settings).

Every object is a frozen msgspec struct tagged by its `kind` (so one decoder reads any of them) and has
`id`, `version`, `created_at` and `updated_at`. `version` is the store revision of the object's last write:
a write based on an older version is refused, and the same number is etcd's `mod_revision`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar, Literal

import msgspec

from treeherd.model.base import Object
from treeherd.model.discovery import Endpoint
from treeherd.model.gateway import BackendState, GatewayRecord, HealthPolicy
from treeherd.model.proxies import ProxyRecord
from treeherd.model.puppet import PuppetCatalog, PuppetConflict
from treeherd.model.security import ApiToken, AuditLog, JoinedKey, RevokedNode, UserCertificate
from treeherd.model.services import ClusterSettings, Service, Task
from treeherd.model.states import Availability, NodeRole, NodeState

ParamValue = str | int | float | bool | None | list[Any] | dict[str, Any]
MachineKind = Literal["physical", "virtual"]


class DomainUri(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One route: requests for `uri` (a path prefix) on domain `domain_id` go to the node that holds it."""

    domain_id: str
    uri: str


class TreeNode(Object, frozen=True, kw_only=True, tag="node"):
    """A node of the service tree: a service or a group of services, named by its dotted path.

    Optional fields left unset (None) are inherited from the nearest ancestor that sets them;
    `labels` and `puppet_classes` inherit key by key. `puppet_exclude` drops inherited classes here.
    """

    kind: ClassVar[str] = "node"
    path: str
    parent_id: str | None = None
    labels: dict[str, str] = {}
    puppet_classes: dict[str, dict[str, ParamValue]] = {}
    puppet_exclude: list[str] = []
    puppet_environment: str | None = None
    upstream: str | None = None
    port: int | None = None
    ip_hash: bool | None = None
    domain_uris: list[DomainUri] = []


class LimitSupport(msgspec.Struct, frozen=True, kw_only=True):
    """How an agent's host enforces task limits, found when the agent starts: its cgroups (`v1`,
    `hybrid`, `v2`, `none`), per limit the mechanism (`cgroup v1`, `cgroup v2`, for memory
    `rlimit (address space)`; empty: not enforced), and how a task's whole process tree is found
    and ended (`cgroup v2`, or `process group`)."""

    cgroups: str = "none"
    memory: str = ""
    cpu: str = ""
    pids: str = ""
    task_tree: str = "process group"


class AgentStatus(msgspec.Struct, frozen=True, kw_only=True):
    """The state of a machine's agent as the dispatcher sees it."""

    state: NodeState = "unknown"
    message: str = ""
    address: str = ""
    version: str = ""
    since: datetime | None = None
    limits: LimitSupport | None = None


class Machine(Object, frozen=True, kw_only=True, tag="machine"):
    """A host in the inventory, physical or virtual, with the resources it offers.

    A machine that runs an agent is also a node of the cluster (SwarmKit's node): `agent` holds its
    state, `availability` whether it takes tasks, `role` whether it is a manager. Its labels, kind and
    hostname are what placement constraints match.
    """

    kind: ClassVar[str] = "machine"
    hostname: str
    ips: list[str] = []
    machine_kind: MachineKind = "virtual"
    labels: dict[str, str] = {}
    cpus: float = 0.0
    memory_bytes: int = 0
    role: NodeRole = "worker"
    availability: Availability = "active"
    agent: AgentStatus | None = None
    # The node id of the certificate its agent presents, bound at its first session over mutual TLS:
    # from then on only that certificate opens this machine's sessions.
    node_identity: str | None = None


class Binding(Object, frozen=True, kw_only=True, tag="binding"):
    """A machine bound to a tree node with a weight (traffic share; 0 means bound but not serving)."""

    kind: ClassVar[str] = "binding"
    machine_id: str
    node_id: str
    weight: int = 1


class DomainPort(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A port a domain listens on, with or without TLS."""

    port: int
    ssl: bool = False


class Domain(Object, frozen=True, kw_only=True, tag="domain"):
    """A domain served by the edge proxy: its ports, log paths and certificate."""

    kind: ClassVar[str] = "domain"
    name: str
    ports: list[DomainPort] = []
    access_log_path: str
    error_log_path: str
    ssl_cert_path: str | None = None
    ssl_key_path: str | None = None


class ProvisioningRecord(Object, frozen=True, kw_only=True, tag="provision"):
    """A host still being installed and the node it is meant for (read by the ENC before it is bound)."""

    kind: ClassVar[str] = "provision"
    hostname: str
    node_id: str


AnyObject = (
    TreeNode
    | Machine
    | Binding
    | Domain
    | ProvisioningRecord
    | Service
    | Task
    | ClusterSettings
    | PuppetCatalog
    | PuppetConflict
    | BackendState
    | HealthPolicy
    | GatewayRecord
    | ProxyRecord
    | Endpoint
    | ApiToken
    | RevokedNode
    | UserCertificate
    | JoinedKey
    | AuditLog
)
