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


# Service versions a `SharedSpecs` remembers, and machine ids; past either the oldest is forgotten (the
# tasks decoded before keep the copies they hold), so a long-lived reader holds no more than this.
SHARED_VERSIONS = 1024
SHARED_MACHINES = 65_536


class SharedSpecs:
    """Decoded tasks share one copy of each task spec, as the tasks the orchestrator makes do, and one
    copy of the strings many tasks repeat (their service's id, name and node path, their machine's id,
    what made the manager create them).

    Decoded one by one, each task would hold its own copies: about 2.6 kB a task with a short command,
    against 0.6 kB for the orchestrator's. A task is given the copies of the task held for its service
    and spec version, and only once its spec is checked equal to that task's (the version is a hint, not
    a promise); a task whose spec differs is held from then on. Used wherever tasks are decoded in bulk:
    the stores reading their records, an agent its assignments and its local DB.
    """

    def __init__(self, limit: int = SHARED_VERSIONS) -> None:
        self._held: dict[tuple[str, int], Task] = {}
        self._machines: dict[str, str] = {}
        self._limit = limit

    def share(self, obj: AnyObject) -> AnyObject:
        """`obj`, or a task equal to it that holds the shared copies."""
        return self.share_task(obj) if type(obj) is Task else obj

    def share_task(self, task: Task) -> Task:
        """`task`, or one equal to it that holds the shared copies."""
        machine = task.machine_id
        if machine is not None:
            known = self._machines.get(machine)
            if known is not None:
                machine = known
            else:
                if len(self._machines) >= SHARED_MACHINES:
                    del self._machines[next(iter(self._machines))]
                self._machines[machine] = machine
        key = (task.service_id, task.spec_version)
        held = self._held.get(key)
        if held is None or (held.spec is not task.spec and held.spec != task.spec):
            if held is None and len(self._held) >= self._limit:
                del self._held[next(iter(self._held))]
            self._held[key] = task
            return task if machine is task.machine_id else msgspec.structs.replace(task, machine_id=machine)
        service_name = held.service_name if task.service_name == held.service_name else task.service_name
        node_path = held.node_path if task.node_path == held.node_path else task.node_path
        cause = held.cause if task.cause == held.cause else task.cause
        if (
            task.spec is held.spec
            and task.service_id is held.service_id
            and task.service_name is service_name
            and task.node_path is node_path
            and task.cause is cause
            and task.machine_id is machine
        ):
            return task  # shares them already
        return msgspec.structs.replace(
            task,
            spec=held.spec,
            service_id=held.service_id,
            service_name=service_name,
            node_path=node_path,
            cause=cause,
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
