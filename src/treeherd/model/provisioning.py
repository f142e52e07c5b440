"""The asset agent's report: what a freshly installed host says about itself, and what it led to.

`treeherd machine report` sends a `MachineReport`; the manager registers or updates the machine and, if
a provisioning record names the host, binds it to that node and removes the record, in one transaction.
"""

from __future__ import annotations

import msgspec

from treeherd.model.objects import Machine, MachineKind


class MachineReport(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A host's own description. Labels merge into the stored ones (the report never removes any)."""

    hostname: str
    ips: list[str] = []
    machine_kind: MachineKind = "virtual"
    cpus: float = 0.0
    memory_bytes: int = 0
    labels: dict[str, str] = {}


class ReportResult(msgspec.Struct, frozen=True, kw_only=True):
    """What a report did: `created` a new machine or updated one, and the node it was `bound` to (the
    provisioning record's, removed in the same transaction), if any."""

    machine: Machine
    created: bool
    changed: bool
    bound: str | None = None
