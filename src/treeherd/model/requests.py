"""Request bodies of the API (also what the CLI sends): what a caller may set on each object.

Updates use three states per field: absent (unchanged), null (cleared: inherit or default), a value.
Maps (`labels`, `puppet_classes`) update as JSON merge patches: a key set to null is removed.
`version`, when given, makes the update conditional on the object still being at that version.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, UnsetType

from treeherd.model.objects import DomainPort, MachineKind, ParamValue
from treeherd.model.services import CanaryPolicy, NodeDownAction, TaskSpec, UpdatePolicy
from treeherd.model.states import Availability, NodeRole

# What a machine offers: bounded so that every accepted value can be stored (SQLite's integers are
# 64-bit signed).
MemoryBytes = Annotated[int, msgspec.Meta(ge=0, le=2**50)]  # 1 PiB; below 2**53, JSON readers keep it exact
Cpus = Annotated[float, msgspec.Meta(ge=0, le=1_000_000)]


class _Request(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class NodeCreate(_Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    path: str
    labels: dict[str, str] = {}
    puppet_classes: dict[str, dict[str, ParamValue]] = {}
    puppet_exclude: list[str] = []
    puppet_environment: str | None = None
    upstream: str | None = None
    port: int | None = None
    ip_hash: bool | None = None


class NodeUpdate(_Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    version: int | None = None
    labels: dict[str, str | None] = {}
    puppet_classes: dict[str, dict[str, ParamValue] | None] = {}
    puppet_exclude: list[str] | UnsetType = UNSET
    puppet_environment: str | UnsetType | None = UNSET
    upstream: str | UnsetType | None = UNSET
    port: int | UnsetType | None = UNSET
    ip_hash: bool | UnsetType | None = UNSET


class NodeMove(_Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    to: str
    version: int | None = None


class RouteSpec(_Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    domain: str
    uri: str


class MachineCreate(_Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    hostname: str
    ips: list[str] = []
    machine_kind: MachineKind = "virtual"
    labels: dict[str, str] = {}
    cpus: Cpus = 0.0
    memory_bytes: MemoryBytes = 0


class MachineUpdate(_Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    version: int | None = None
    ips: list[str] | UnsetType = UNSET
    machine_kind: MachineKind | UnsetType = UNSET
    labels: dict[str, str | None] = {}
    cpus: Cpus | UnsetType = UNSET
    memory_bytes: MemoryBytes | UnsetType = UNSET
    availability: Availability | UnsetType = UNSET
    role: NodeRole | UnsetType = UNSET


class BindRequest(_Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    node: str
    weight: int = 1


class DomainCreate(_Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    ports: list[DomainPort]
    access_log_path: str | None = None
    error_log_path: str | None = None
    ssl_cert_path: str | None = None
    ssl_key_path: str | None = None


class DomainUpdate(_Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    version: int | None = None
    ports: list[DomainPort] | UnsetType = UNSET
    access_log_path: str | UnsetType | None = UNSET
    error_log_path: str | UnsetType | None = UNSET
    ssl_cert_path: str | UnsetType | None = UNSET
    ssl_key_path: str | UnsetType | None = UNSET


class ProvisionCreate(_Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    hostname: str
    node: str


class ServiceCreate(_Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    node: str
    mode: Literal["replicated", "global"] = "replicated"
    replicas: int = 1
    task: TaskSpec
    on_node_down: NodeDownAction = "replace"
    update: UpdatePolicy = msgspec.field(default_factory=UpdatePolicy)
    rollback: UpdatePolicy = msgspec.field(default_factory=UpdatePolicy)


class ServiceUpdate(_Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Changes to a service. A changed `task` (or `force`) replaces its tasks as the update policy
    says; any update of a service whose update is paused resumes it."""

    version: int | None = None
    replicas: int | UnsetType = UNSET
    task: TaskSpec | UnsetType = UNSET
    on_node_down: NodeDownAction | UnsetType = UNSET
    update: UpdatePolicy | UnsetType = UNSET
    rollback: UpdatePolicy | UnsetType = UNSET
    # Replace every task even without a change of spec (a rolling restart).
    force: bool = False
    # Run the changed spec on a few slots first, judged by the gateways' figures (`core.tasks.canary`).
    canary: CanaryPolicy | None = None


class ClusterUpdate(_Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Changes to the cluster settings (absent fields stay as they are)."""

    version: int | None = None
    heartbeat_period_s: float | UnsetType = UNSET
    heartbeat_epsilon_s: float | UnsetType = UNSET
    heartbeat_grace_multiplier: float | UnsetType = UNSET
    status_batch_interval_s: float | UnsetType = UNSET
    status_batch_max: int | UnsetType = UNSET
    task_history: int | UnsetType = UNSET
    registration_limit: int | UnsetType = UNSET
    registration_window_s: float | UnsetType = UNSET
    node_loss_fraction: float | UnsetType = UNSET
    node_loss_hold_s: float | UnsetType = UNSET
    endpoint_ttl_s: float | UnsetType = UNSET
    drain_delay_s: float | UnsetType = UNSET
    puppet_default_class: str | UnsetType | None = UNSET
    puppet_unknown_host: Literal["fail", "default"] | UnsetType = UNSET
