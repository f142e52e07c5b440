"""How stored records are encoded: MessagePack of the tagged object structs (one decoder for every kind)."""

from __future__ import annotations

import msgspec

from treeherd.model.objects import AnyObject
from treeherd.model.services import Task

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(AnyObject)


def encode(obj: AnyObject) -> bytes:
    """The stored bytes of an object."""
    return _encoder.encode(obj)


def decode(data: bytes) -> AnyObject:
    """The object stored as `data`."""
    obj: AnyObject = _decoder.decode(data)
    return obj


class SharedSpecs:
    """Decoded tasks share one copy of each task spec, as the tasks the orchestrator makes do, and one
    copy of the strings many tasks repeat (their service's id, name and node path, their machine's id).

    Decoded one by one, each task would hold its own copies: about 2.6 kB a task with a short command,
    against 0.6 kB for the orchestrator's. Tasks of the same service and spec version are given the first
    such task's spec, once it is checked equal.
    """

    def __init__(self) -> None:
        self._first: dict[tuple[str, int], Task] = {}
        self._machines: dict[str, str] = {}

    def share(self, obj: AnyObject) -> AnyObject:
        """`obj`, or a task equal to it that holds the shared copies."""
        if type(obj) is not Task:
            return obj
        machine = obj.machine_id
        if machine is not None:
            machine = self._machines.setdefault(machine, machine)
        first = self._first.setdefault((obj.service_id, obj.spec_version), obj)
        if first is obj or (first.spec is not obj.spec and first.spec != obj.spec):
            return obj if machine is obj.machine_id else msgspec.structs.replace(obj, machine_id=machine)
        return msgspec.structs.replace(
            obj,
            spec=first.spec,
            service_id=first.service_id,
            service_name=first.service_name if obj.service_name == first.service_name else obj.service_name,
            node_path=first.node_path if obj.node_path == first.node_path else obj.node_path,
            machine_id=machine,
        )
