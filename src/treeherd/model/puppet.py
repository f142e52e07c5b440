"""Puppet's side of the tree: the class catalog the nodes may choose from, and recorded ENC conflicts.

- `PuppetCatalog` (one object, name "default") lists the classes the Puppet code defines, each with its
  parameters and parent. While no catalog was ever synced, any well-formed class name is accepted; once
  one is, a node may only use classes it lists, with parameters the class declares (a class read from a
  classes file, `params_known=False`, accepts any parameter).
- `PuppetConflict` (one per hostname) records that a host bound to several nodes got only the default
  class because those nodes' classes differ; the ENC creates it, updates it when the nodes change and
  deletes it once the host no longer conflicts, so each step shows in the event stream.

This module imports no other model module but `base` (model.objects imports it for the kind union).
"""

from __future__ import annotations

from typing import ClassVar

import msgspec

from treeherd.model.base import Object


class PuppetParam(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A class parameter as written in the Puppet code: its type and default are source text."""

    name: str
    type: str | None = None
    default: str | None = None

    @property
    def required(self) -> bool:
        """Puppet needs a value for it (from the ENC or Hiera) when the class has no default."""
        return self.default is None


class PuppetClass(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A class the Puppet code defines. `params_known` is False for classes read from a classes file,
    which names classes only: their parameters are not checked."""

    name: str
    parent: str | None = None
    params: list[PuppetParam] = []
    params_known: bool = True
    file: str | None = None


class PuppetCatalog(Object, frozen=True, kw_only=True, tag="puppet_catalog"):
    """The classes nodes may be associated with, as last synced from the Puppet code."""

    kind: ClassVar[str] = "puppet_catalog"
    name: str = "default"
    source: str = ""
    classes: list[PuppetClass] = []


class PuppetConflict(Object, frozen=True, kw_only=True, tag="puppet_conflict"):
    """A host whose bound nodes resolve to different classes (or environments): the ENC gave it only
    the cluster's default class. `nodes` are the paths involved, `reason` says what differs."""

    kind: ClassVar[str] = "puppet_conflict"
    hostname: str
    nodes: list[str]
    reason: str


class CatalogSync(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Replace the catalog. Refused when a node (or the cluster's default class) uses a class or a
    parameter the new catalog lacks, unless `force`; `dry_run` reports the change and writes nothing."""

    classes: list[PuppetClass]
    source: str = ""
    force: bool = False
    dry_run: bool = False


class CatalogChange(msgspec.Struct, frozen=True, kw_only=True):
    """What a sync changed (or, in a dry run, would change), by class name."""

    added: list[str]
    removed: list[str]
    changed: list[str]
    classes: int
    dry_run: bool = False
    # Nodes left using classes or parameters the catalog no longer has (only with `force`).
    stale: list[str] = []
