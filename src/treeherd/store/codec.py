"""How stored records are encoded: MessagePack of the tagged object structs (one decoder for every kind),
and a task's spec apart from the rest of the task, keyed by its content."""

from __future__ import annotations

import hashlib

import msgspec

from treeherd.model.objects import AnyObject
from treeherd.model.services import Task, TaskSpec

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


# ---- tasks stored apart from their spec ---------------------------------------------------------------
class _NoSpec(msgspec.Struct, frozen=True):
    """Stands in for a task's spec in its stored row: encodes as the smallest valid spec."""

    command: tuple[str, ...] = ()


_NO_SPEC = _NoSpec()
_spec_encoder = msgspec.msgpack.Encoder()
_spec_decoder = msgspec.msgpack.Decoder(TaskSpec)
_MAX_KEYS = 4_096  # cached (service, spec version) -> key entries; a full cache starts again


def encode_without_spec(task: Task) -> bytes:
    """The stored bytes of `task` with its spec left out (`with_spec` puts it back).

    The spec is about half of a task's bytes and never changes over the task's life, while its status
    changes several times: stored with the task, every status change rewrote it. The task is encoded
    with a stand-in that decodes as an empty spec (a struct's fields are not type-checked on replace)."""
    return _encoder.encode(msgspec.structs.replace(task, spec=_NO_SPEC))


def with_spec(data: bytes, spec: TaskSpec) -> Task:
    """The task stored as `data` by `encode_without_spec`, holding `spec`."""
    task = _decoder.decode(data)
    if type(task) is not Task:
        raise ValueError(f"a stored row without its spec holds a {task.kind}, not a task")
    return msgspec.structs.replace(task, spec=spec)


def encode_spec(spec: TaskSpec) -> bytes:
    return _spec_encoder.encode(spec)


def decode_spec(data: bytes) -> TaskSpec:
    return _spec_decoder.decode(data)


SPEC_KEY_BYTES = 16  # a spec's key: the blake2b digest of its bytes, this long


def spec_key(data: bytes) -> bytes:
    """The key of the spec whose bytes (`encode_spec`) are `data`."""
    return hashlib.blake2b(data, digest_size=SPEC_KEY_BYTES).digest()


class SpecKeys:
    """The key of a task's spec: a hash of its bytes, so equal specs are stored once whichever tasks and
    services hold them. Tasks of one service and spec version share one spec object, so the key is
    cached by those and found again by identity; a different object is compared before its key is
    reused."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, int], tuple[TaskSpec, bytes, bytes]] = {}

    def key(self, task: Task) -> tuple[bytes, bytes]:
        """The key of `task`'s spec and the spec's bytes."""
        cached = self._cache.get((task.service_id, task.spec_version))
        if cached is not None and (cached[0] is task.spec or cached[0] == task.spec):
            return cached[1], cached[2]
        data = encode_spec(task.spec)
        key = spec_key(data)
        if len(self._cache) >= _MAX_KEYS:
            self._cache.clear()
        self._cache[task.service_id, task.spec_version] = (task.spec, key, data)
        return key, data
