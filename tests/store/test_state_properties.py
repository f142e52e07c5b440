"""`store.state.State` against a brute-force model: random transactions, checked after every step.

The model keeps plain dicts of objects and decides each operation by scanning everything (no indexes);
its unique keys and references are written out here, independently of `model/kinds.py`. After every
step the state must hold exactly the model's objects, its indexes must match what the objects declare,
every reference must resolve, every non-unique index must file exactly what a scan finds, the
cross-object invariants of `core/tree/integrity.py` must hold (a node's path extends its parent's by one
segment; one node's machines are all physical or all virtual), and a refused transaction must leave the
state exactly as it was. An accepted one must also survive being rolled back and replayed, and what a
restart does (a new state loaded from its objects), indexes included. Accepted transactions gather into
a batch, as in the engine's writer: while it is open, `PreBatchView` must answer every read as a copy of
the state from before the batch does; the batch then becomes durable, or its write fails and it is
rolled back whole.
"""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from store_helpers import answers, binding, domain, endpoint, machine, node, reads_of, route

from treeherd.model.discovery import Endpoint
from treeherd.model.errors import AlreadyExists, NotFound, Refused, VersionConflict
from treeherd.model.kinds import KINDS
from treeherd.model.objects import (
    AgentStatus,
    AnyObject,
    Binding,
    Domain,
    Machine,
    ProvisioningRecord,
    TreeNode,
)
from treeherd.model.ops import Assert, Create, Delete, Op, Update
from treeherd.store.prebatch import PreBatchView
from treeherd.store.state import State, Undo

CLASSES: dict[str, type[AnyObject]] = {
    "node": TreeNode,
    "machine": Machine,
    "binding": Binding,
    "domain": Domain,
    "endpoint": Endpoint,
}
REFUSALS = (AlreadyExists, NotFound, VersionConflict, Refused)


# ---- the model -----------------------------------------------------------------------------------


def unique_keys(obj: AnyObject) -> set[tuple[str, ...]]:
    if isinstance(obj, TreeNode):
        return {("path", obj.path)} | {("route", d.domain_id, d.uri) for d in obj.domain_uris}
    if isinstance(obj, Machine):
        return {("hostname", obj.hostname)}
    if isinstance(obj, Binding):
        return {("pair", obj.machine_id, obj.node_id)}
    if isinstance(obj, Endpoint):
        return {("address", obj.service, obj.address, str(obj.port))}
    assert isinstance(obj, Domain)
    return {("name", obj.name)}


def references(obj: AnyObject) -> set[tuple[str, str]]:
    """(target kind, target id) of everything `obj` refers to."""
    if isinstance(obj, TreeNode):
        parent = {("node", obj.parent_id)} if obj.parent_id is not None else set()
        return parent | {("domain", d.domain_id) for d in obj.domain_uris}
    if isinstance(obj, Binding):
        return {("machine", obj.machine_id), ("node", obj.node_id)}
    return set()


def parent_path(path: str) -> str | None:
    return path.rsplit(".", 1)[0] if "." in path else None


def integrity_violations(objects: dict[str, dict[str, AnyObject]]) -> set[type[Exception]]:
    """The cross-object invariants, checked over everything (the store checks what a txn touched)."""
    found: set[type[Exception]] = set()
    nodes, machines = objects["node"], objects["machine"]
    for n in nodes.values():
        parent = nodes.get(n.parent_id) if n.parent_id is not None else None
        if parent_path(n.path) != (parent.path if parent is not None else None):
            found.add(VersionConflict)
    kinds_by_node: dict[str, set[str]] = {}
    for b in objects["binding"].values():
        kinds_by_node.setdefault(b.node_id, set()).add(machines[b.machine_id].machine_kind)
    if any(len(kinds) > 1 for kinds in kinds_by_node.values()):
        found.add(Refused)
    return found


class Model:
    def __init__(self) -> None:
        self.objects: dict[str, dict[str, AnyObject]] = {kind: {} for kind in CLASSES}
        self.revision = 0

    def copy(self) -> Model:
        other = Model()
        other.objects = {kind: dict(by_id) for kind, by_id in self.objects.items()}
        other.revision = self.revision
        return other

    def violations(self, op: Op) -> set[type[Exception]]:
        """The errors that `op` may be refused with here (empty: it applies)."""
        obj = op.object
        by_id = self.objects[obj.kind]
        current = by_id.get(obj.id)
        found: set[type[Exception]] = set()
        if not isinstance(op, Create):
            if current is None:
                return {NotFound}
            if current.version != obj.version:
                return {VersionConflict}
        elif current is not None:
            found.add(AlreadyExists)
        if isinstance(op, Create | Update):
            keys = unique_keys(obj)
            if any(other.id != obj.id and keys & unique_keys(other) for other in by_id.values()):
                found.add(AlreadyExists)
            if any(target not in self.objects[kind] for kind, target in references(obj)):
                found.add(NotFound)
        referenced = any(
            (obj.kind, obj.id) in references(o) for objs in self.objects.values() for o in objs.values()
        )
        if isinstance(op, Delete) and referenced:
            found.add(Refused)
        return found

    def put(self, op: Op, revision: int) -> tuple[str, AnyObject] | None:
        """Apply an op that has no violations; returns its expected event (type, object)."""
        obj = op.object
        by_id = self.objects[obj.kind]
        if isinstance(op, Assert):
            return None
        if isinstance(op, Delete):
            return "deleted", by_id.pop(obj.id)
        stored = msgspec.structs.replace(obj, version=revision)
        by_id[obj.id] = stored
        return ("created" if isinstance(op, Create) else "updated"), stored

    def apply(
        self, ops: list[Op], revision: int
    ) -> tuple[set[type[Exception]] | None, list[tuple[str, Any]]]:
        """All or nothing: (None, events) when applied, else (the first failing op's violations, [])."""
        scratch = self.copy()
        events = []
        for op in ops:
            found = scratch.violations(op)
            if found:
                return found, []
            event = scratch.put(op, revision)
            if event is not None:
                events.append(event)
        found = integrity_violations(scratch.objects)
        if found:
            return found, []
        self.objects = scratch.objects
        if events:  # a transaction of only asserts writes nothing and spends no revision
            self.revision = revision
        return None, events


# ---- actions: drawn as plain tuples, turned into ops against the (scratch) model ----------------

PICK = st.sampled_from([None, *range(20)])  # None (now and then): an id that does not exist
NAME = st.sampled_from(["a", "b", "c"])
URI = st.sampled_from(["/", "/x"])
STALE = st.sampled_from([None, None, None, None, -1, 1])  # None (mostly): the current version
KIND = st.sampled_from(sorted(CLASSES))
HOSTS = {"a": "h1", "b": "h2", "c": "h3"}
REUSE = st.sampled_from([False, False, False, True])  # True: Create with an id already taken
PORT = st.sampled_from([1, 2])

ACTION = st.one_of(
    st.tuples(
        st.just("create_node"),
        st.just("root") | PICK,
        NAME,
        st.none() | st.tuples(PICK, URI),
        REUSE,
    ),
    st.tuples(st.just("create_machine"), NAME, st.sampled_from(["virtual", "physical"]), REUSE),
    st.tuples(st.just("create_domain"), NAME, REUSE),
    st.tuples(st.just("bind"), PICK, PICK, REUSE),
    st.tuples(st.just("create_endpoint"), NAME, PORT, st.none() | PICK, REUSE),
    st.tuples(st.just("update"), KIND, PICK, STALE, st.integers(0, 3), NAME, PICK, URI),
    st.tuples(st.just("delete"), KIND, PICK, STALE),
    st.tuples(st.just("assert"), KIND, PICK, STALE),
)

GHOSTS: dict[str, AnyObject] = {
    "node": node("ghost-node"),
    "machine": machine("ghost-machine"),
    "binding": binding("ghost-binding", "ghost-machine", "ghost-node"),
    "domain": domain("ghost-domain"),
    "endpoint": endpoint("ghost-endpoint", "a", 1),
}


def pick(model: Model, kind: str, index: int | None) -> AnyObject | None:
    ids = sorted(model.objects[kind])
    if index is None or not ids:
        return None
    return model.objects[kind][ids[index % len(ids)]]


def id_of(obj: AnyObject | None) -> str:
    return "missing" if obj is None else obj.id


def versioned(obj: AnyObject, stale: int | None) -> int:
    return obj.version if stale is None else obj.version + stale


class StateMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.state = State()
        self.model = Model()
        self.serial = 0
        # The open batch: its transactions' undo logs, and the state and model from before it.
        self.batch: list[list[Undo]] = []
        self.before_batch: tuple[State, Model] | None = None

    def fresh(self, model: Model, kind: str, reuse: bool) -> str:
        if reuse and model.objects[kind]:
            return sorted(model.objects[kind])[0]
        self.serial += 1
        return f"{kind}-{self.serial}"

    def build(self, model: Model, action: tuple[Any, ...]) -> Op:
        match action:
            case ("create_node", parent, name, rte, reuse):
                if parent == "root":
                    parent_id, path = None, name
                else:
                    found = pick(model, "node", parent)
                    parent_id = id_of(found)
                    path = f"{found.path if found else 'missing'}.{name}"
                uris = [] if rte is None else [route(id_of(pick(model, "domain", rte[0])), rte[1])]
                return Create(
                    node(self.fresh(model, "node", reuse), path, parent=parent_id, domain_uris=uris)
                )
            case ("create_machine", name, machine_kind, reuse):
                return Create(
                    machine(self.fresh(model, "machine", reuse), HOSTS[name], machine_kind=machine_kind)
                )
            case ("create_domain", name, reuse):
                return Create(domain(self.fresh(model, "domain", reuse), f"{name}.example"))
            case ("create_endpoint", service, port, m, reuse):
                # An endpoint's machine need not exist (no reference): PICK's None gives "missing".
                machine_id = None if m is None else id_of(pick(model, "machine", m))
                return Create(
                    endpoint(self.fresh(model, "endpoint", reuse), service, port, machine_id=machine_id)
                )
            case ("bind", m, n, reuse):
                machine_id, node_id = id_of(pick(model, "machine", m)), id_of(pick(model, "node", n))
                return Create(binding(self.fresh(model, "binding", reuse), machine_id, node_id))
            case ("update", kind, index, stale, choice, name, other, uri):
                obj = pick(model, kind, index) or GHOSTS[kind]
                changes: dict[str, Any] = {"version": versioned(obj, stale)}
                if kind == "node":
                    if choice == 0:
                        changes["labels"] = {"name": name}
                    elif choice == 1:  # a new last segment, same parent (children no longer extend it)
                        head = parent_path(obj.path)
                        changes["path"] = name if head is None else f"{head}.{name}"
                    elif choice == 2:  # a move under another parent (None: to the root)
                        parent = pick(model, "node", other)
                        changes["parent_id"] = None if parent is None else parent.id
                        changes["path"] = name if parent is None else f"{parent.path}.{name}"
                    else:
                        changes["domain_uris"] = [route(id_of(pick(model, "domain", other)), uri)]
                elif kind == "machine":
                    if choice < 2:
                        changes["hostname"] = HOSTS[name]
                    elif choice == 2:  # and an agent in some state (the agent_state tally counts them)
                        changes["cpus"] = float(len(name))
                        changes["agent"] = AgentStatus(state=("ready", "down", "unknown")[len(name) % 3])
                    else:
                        changes["machine_kind"] = "physical" if obj.machine_kind == "virtual" else "virtual"
                elif kind == "binding":
                    if choice < 2:
                        changes["weight"] = choice
                    else:
                        target = "node" if choice == 2 else "machine"
                        changes[f"{target}_id"] = id_of(pick(model, target, other))
                elif kind == "endpoint":
                    if choice == 0:  # keeps every key
                        changes["weight"] = len(name)
                    elif choice == 1:
                        changes["service"] = name
                    elif choice == 2:  # to another machine, or to none
                        found = pick(model, "machine", other)
                        changes["machine_id"] = None if found is None else found.id
                    else:
                        changes["port"] = 3 - obj.port
                else:
                    changes["name"] = f"{name}.example"
                return Update(msgspec.structs.replace(obj, **changes))
            case ("delete" | "assert" as verb, kind, index, stale):
                obj = pick(model, kind, index) or GHOSTS[kind]
                obj = msgspec.structs.replace(obj, version=versioned(obj, stale))
                return Delete(obj) if verb == "delete" else Assert(obj)
        raise AssertionError(action)

    def run(self, ops: list[Op]) -> None:
        self.open_batch()
        revision = self.state.revision + 1
        before = snapshot(self.state)
        expected, expected_events = self.model.apply(ops, revision)
        refused: Exception | None = None
        try:
            events, undo = self.state.apply(ops, revision)
        except REFUSALS as error:
            refused = error
        if refused is not None:
            assert expected is not None, f"state refused with {refused!r}; the model accepts {ops}"
            assert type(refused) in expected, f"state refused with {refused!r}; the model expects {expected}"
            assert snapshot(self.state) == before, "a refused transaction changed the state"
            return
        assert expected is None, f"state accepted {ops}; the model expects {expected}"
        assert [(e.type, e.object) for e in events] == expected_events
        assert all(e.revision == revision for e in events)
        if events:
            after = snapshot(self.state)
            self.state.rollback(undo)
            self.state.revision = before[0]
            assert snapshot(self.state) == before, "a rollback did not restore the state"
            self.state.replay(events, revision)
            assert snapshot(self.state) == after, "a replay did not give the state apply gave"
            self.batch.append(undo)
            self.prebatch_reads_as_before()

    def prebatch_reads_as_before(self) -> None:
        """What the engine's readers see while the batch is written: the state from before it."""
        previous, _ = self.before_batch  # type: ignore[misc]
        view = PreBatchView(self.state, self.batch, previous.revision)
        questions = reads_of(previous, self.state)
        assert answers(view, questions) == answers(previous, questions)

    def open_batch(self) -> None:
        if not self.batch:
            copy = State()
            copy.load(self.state.objects(), self.state.revision)
            self.before_batch = (copy, self.model.copy())

    @rule()
    def batch_written(self) -> None:
        self.batch = []

    @rule()
    def batch_write_failed(self) -> None:
        """The engine rolls back every transaction of a batch it could not write, newest first."""
        if not self.batch:
            return
        previous, model = self.before_batch  # type: ignore[misc]
        for undo in reversed(self.batch):
            self.state.rollback(undo)
        self.state.revision = previous.revision
        self.model = model
        self.batch = []
        assert snapshot(self.state) == snapshot(previous)

    # ---- rules ---------------------------------------------------------------------------------
    @initialize()
    def seed(self) -> None:
        self.run(
            [
                Create(domain("domain-0", "a.example")),
                Create(node("node-0", "a", domain_uris=[route("domain-0", "/")])),
                Create(machine("machine-0", "h1")),
            ]
        )

    @rule(action=ACTION)
    def single(self, action: tuple[Any, ...]) -> None:
        self.run([self.build(self.model, action)])

    @rule(actions=st.lists(ACTION, min_size=2, max_size=4))
    def transaction(self, actions: list[tuple[Any, ...]]) -> None:
        """Several ops, each built against the effect of the ones before it (so later ops can use them)."""
        scratch = self.model.copy()
        revision = self.state.revision + 1
        ops = []
        for action in actions:
            op = self.build(scratch, action)
            ops.append(op)
            if not scratch.violations(op):
                scratch.put(op, revision)
        self.run(ops)

    # ---- invariants ----------------------------------------------------------------------------
    @invariant()
    def matches_model(self) -> None:
        state = self.state
        assert state.revision == self.model.revision
        for kind, cls in CLASSES.items():
            assert {obj.id: obj for obj in state.all(cls)} == self.model.objects[kind]
            assert state.count(cls) == len(self.model.objects[kind])
            for id, obj in self.model.objects[kind].items():
                assert state.get(cls, id) == obj
        assert state.count(ProvisioningRecord) == 0

    @invariant()
    def unique_indexes_are_exact(self) -> None:
        state = self.state
        for info in KINDS.values():
            for key in info.unique:
                expected: dict[str, str] = {}
                for obj in state.all(info.type):
                    for value in key.keys(obj):
                        holder = expected.setdefault(value, obj.id)
                        assert holder == obj.id, (
                            f"{info.name} {key.name} {value!r} held by {holder} and {obj.id}"
                        )
                assert state._unique[(info.name, key.name)] == expected
                for value, id in expected.items():
                    assert state.lookup(info.type, key.name, value).id == id

    @invariant()
    def indexes_equal_a_scan(self) -> None:
        state = self.state
        for info in KINDS.values():
            for index in info.indexes:
                expected: dict[str, set[str]] = {}
                for obj in state.all(info.type):
                    for key in index.keys(obj):
                        expected.setdefault(key, set()).add(obj.id)
                assert state._indexes[(info.name, index.name)] == expected
                for key, ids in expected.items():
                    found = state.where(info.type, index.name, key)
                    assert sorted(o.id for o in found) == sorted(ids)
                    assert all(state.get(info.type, o.id) is o for o in found)
        # The endpoint indexes, written out here: by service, and by machine when one is set.
        endpoints = self.model.objects["endpoint"].values()
        for service in ("a", "b", "c", "nope"):
            found = state.where(Endpoint, "service", service)
            assert sorted(e.id for e in found) == sorted(e.id for e in endpoints if e.service == service)
        for machine_id in [*self.model.objects["machine"], "missing", "nope"]:
            found = state.where(Endpoint, "machine", machine_id)
            assert sorted(e.id for e in found) == sorted(
                e.id for e in endpoints if e.machine_id == machine_id
            )

    @invariant()
    def tallies_equal_a_count(self) -> None:
        state = self.state
        for info in KINDS.values():
            for tally in info.tallies:
                expected: dict[str, int] = {}
                for obj in state.all(info.type):
                    for key in tally.keys(obj):
                        expected[key] = expected.get(key, 0) + 1
                assert state._tallies[(info.name, tally.name)] == expected
                for key, count in expected.items():
                    assert state.tally(info.type, tally.name, key) == count

    @invariant()
    def a_reload_holds_the_same(self) -> None:
        """A state loaded from this one's objects (a restart) has the same objects and indexes."""
        reloaded = State()
        reloaded.load(self.state.objects(), self.state.revision)
        assert snapshot(reloaded) == snapshot(self.state)

    @invariant()
    def integrity_holds(self) -> None:
        state = self.state
        for n in state.all(TreeNode):
            parent = state.get(TreeNode, n.parent_id) if n.parent_id is not None else None
            assert parent_path(n.path) == (parent.path if parent is not None else None), n
        for n in state.all(TreeNode):
            bound = state.referrers(Binding, "node", n.id)
            assert len({state.get(Machine, b.machine_id).machine_kind for b in bound}) <= 1, n.path

    @invariant()
    def references_resolve(self) -> None:
        state = self.state
        for info in KINDS.values():
            for ref in info.references:
                expected: dict[str, set[str]] = {}
                for obj in state.all(info.type):
                    for target in ref.ids(obj):
                        assert state.get(KINDS[ref.target].type, target) is not None, (
                            f"{info.name} {obj.id} refers to missing {ref.target} {target} as {ref.name}"
                        )
                        expected.setdefault(target, set()).add(obj.id)
                assert state._refs[(info.name, ref.name)] == expected
                for target, ids in expected.items():
                    assert {o.id for o in state.referrers(info.type, ref.name, target)} == ids


def snapshot(state: State) -> Any:
    """Everything a State holds, copied: objects, unique, non-unique and reference indexes, tallies,
    revision."""
    return (
        state.revision,
        {kind: dict(by_id) for kind, by_id in state._objects.items()},
        {name: dict(index) for name, index in state._unique.items()},
        {name: {key: set(ids) for key, ids in index.items()} for name, index in state._indexes.items()},
        {name: {target: set(ids) for target, ids in index.items()} for name, index in state._refs.items()},
        {name: dict(counts) for name, counts in state._tallies.items()},
    )


StateMachine.TestCase.settings = settings(max_examples=50, stateful_step_count=30, deadline=None)
TestState = StateMachine.TestCase
