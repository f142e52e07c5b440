"""Read models the API returns beside the stored objects: resolved nodes and bindings with names."""

from __future__ import annotations

import msgspec

from treeherd.model.objects import ParamValue


class Sourced(msgspec.Struct, frozen=True, kw_only=True):
    """An effective value and the path of the node it came from (`(default)` when no node sets it)."""

    value: str | int | bool | None
    source: str


class SourcedClass(msgspec.Struct, frozen=True, kw_only=True):
    """An effective Puppet class: its parameters and the node that set it."""

    params: dict[str, ParamValue]
    source: str


class ResolvedNode(msgspec.Struct, frozen=True, kw_only=True):
    """A node's effective attributes after inheritance, each with where it came from."""

    id: str
    path: str
    labels: dict[str, Sourced]
    puppet_classes: dict[str, SourcedClass]
    puppet_environment: Sourced
    upstream: Sourced
    port: Sourced
    ip_hash: Sourced


class BindingView(msgspec.Struct, frozen=True, kw_only=True):
    """A binding with the names people use: hostname and node path."""

    id: str
    version: int
    hostname: str
    path: str
    weight: int
    machine_id: str
    node_id: str


class ApiError(msgspec.Struct, frozen=True, kw_only=True):
    """The body of every error answer: a short code, what is wrong and what to do, and the field."""

    error: str
    detail: str
    field: str | None = None


class Health(msgspec.Struct, frozen=True, kw_only=True):
    status: str
    revision: int
    version: str


class Deleted(msgspec.Struct, frozen=True, kw_only=True):
    """What a delete removed, counted by kind."""

    deleted: dict[str, int]


class ProvisionView(msgspec.Struct, frozen=True, kw_only=True):
    """A provisioning record with its node's path."""

    id: str
    version: int
    hostname: str
    path: str
    node_id: str
    created_at: str
