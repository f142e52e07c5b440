"""The answer of the External Node Classifier: what Puppet gets for one host, and why.

`classes` maps each class to its parameters, `parameters` are top-scope variables (always
`treeherd_nodes` and `treeherd_source`; the machine's `treeherd_labels` and `treeherd_kind` when it is
in the inventory; `treeherd_conflict` on a conflict), `environment` is None when no node sets one
(Puppet then keeps the agent's own). `source` says which rule decided:
- `bound`: the host's bound nodes, all resolving to the same classes and environment;
- `provisioning`: not bound yet, but a provisioning record names its intended node;
- `conflict`: bound nodes disagree, so only the cluster's default class;
- `default`: an unknown host answered with the default class (`--unknown=default`).
"""

from __future__ import annotations

from typing import Literal

import msgspec

from treeherd.model.objects import ParamValue

EncSource = Literal["bound", "provisioning", "conflict", "default"]
UnknownHost = Literal["fail", "default"]


class EncAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """The ENC document for one host (rendered to YAML by the `treeherd enc` command)."""

    hostname: str
    source: EncSource
    classes: dict[str, dict[str, ParamValue]]
    parameters: dict[str, ParamValue]
    environment: str | None = None
