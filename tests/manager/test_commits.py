"""manager.commits on the in-memory store: each failure rule of the plan-commit-retry loop (conflict,
NotFound, AlreadyExists, running out of attempts, other errors) and of the chunked commit (stop or go on
after a refused chunk)."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence

import msgspec
import pytest
from tests.api.helpers import LoopTurns

from treeherd.core.view import View
from treeherd.manager import commits
from treeherd.manager.commits import Exhausted, Lost, RefusedChunk, commit_chunks, commit_plan, commit_steps
from treeherd.model.errors import (
    AlreadyExists,
    InvalidInput,
    NotFound,
    TreeherdError,
    Unavailable,
    VersionConflict,
)
from treeherd.model.objects import AgentStatus, Machine
from treeherd.model.ops import Create, Delete, Op, Update
from treeherd.store.base import Committed
from treeherd.store.memory import MemoryStore
from treeherd.testing.factories import Ids, machine


class RacingStore(MemoryStore):
    """A store in which another writer's commit lands just before each of the next `races` commits."""

    def __init__(self) -> None:
        super().__init__()
        self.races = 0
        self.race: Callable[[View], Sequence[Op]] = lambda view: []
        self.commits = 0  # transactions asked for by the code under test

    async def commit(self, ops: Sequence[Op]) -> Committed:
        self.commits += 1
        if self.races > 0:
            self.races -= 1
            await super().commit(self.race(self.view()))
        return await super().commit(ops)


@pytest.fixture
async def store() -> AsyncIterator[RacingStore]:
    opened = RacingStore()
    await opened.open()
    yield opened
    await opened.close()


def get(view: View, hostname: str) -> Machine | None:
    return view.lookup(Machine, "hostname", hostname)


def relabel(hostname: str, value: str) -> Callable[[View], list[Op]]:
    """The other writer: changes the machine's label `by`."""

    def race(view: View) -> list[Op]:
        found = get(view, hostname)
        assert found is not None
        return [Update(msgspec.structs.replace(found, labels={"by": value}))]

    return race


class Plan:
    """Sets the machine's label `by` to "us", creating the machine when it is missing; counts its calls."""

    def __init__(self, hostname: str) -> None:
        self.hostname = hostname
        self.calls = 0
        self.ids = Ids("ours")

    def __call__(self, view: View) -> list[Op]:
        self.calls += 1
        found = get(view, self.hostname)
        if found is None:
            return [Create(machine(self.hostname, id=self.ids(), labels={"by": "us"}))]
        return [Update(msgspec.structs.replace(found, labels={"by": "us"}))]


async def add(store: RacingStore, hostname: str) -> Machine:
    created = (await store.commit([Create(machine(hostname))])).objects[0]
    store.commits = 0
    assert isinstance(created, Machine)
    return created


# ---- commit_plan ---------------------------------------------------------------------------------------
async def test_a_lost_race_is_planned_again_from_the_new_view(store: RacingStore) -> None:
    await add(store, "web-1")
    store.races, store.race = 1, relabel("web-1", "them")
    plan = Plan("web-1")
    committed = await commit_plan(store, plan)
    assert plan.calls == 2
    assert [m.labels for m in committed.objects if isinstance(m, Machine)] == [{"by": "us"}]
    found = get(store.view(), "web-1")
    assert found is not None and found.labels == {"by": "us"}


async def test_a_conflict_is_raised_when_the_caller_resolves_it(store: RacingStore) -> None:
    await add(store, "web-1")
    store.races, store.race = 1, relabel("web-1", "them")
    plan = Plan("web-1")
    with pytest.raises(VersionConflict):
        await commit_plan(store, plan, on_conflict=Lost.RAISE)
    assert plan.calls == 1
    found = get(store.view(), "web-1")
    assert found is not None and found.labels == {"by": "them"}


async def test_the_last_conflict_is_raised_after_every_attempt_lost(store: RacingStore) -> None:
    await add(store, "web-1")
    store.races, store.race = 10, relabel("web-1", "them")
    plan = Plan("web-1")
    with pytest.raises(VersionConflict):
        await commit_plan(store, plan, attempts=3)
    assert plan.calls == 3
    assert store.commits == 3


async def test_a_writer_that_gives_up_gets_none_and_a_warning(
    store: RacingStore, caplog: pytest.LogCaptureFixture
) -> None:
    await add(store, "web-1")
    store.races, store.race = commits.ATTEMPTS, relabel("web-1", "them")
    plan = Plan("web-1")
    with caplog.at_level(logging.DEBUG, logger="treeherd.manager.commits"):
        committed = await commit_plan(store, plan, what="the relabel", exhausted=Exhausted.GIVE_UP)
    assert committed is None
    assert plan.calls == commits.ATTEMPTS
    messages = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert messages[-1] == (
        "WARNING",
        f"the relabel lost {commits.ATTEMPTS} races in a row; will retry later",
    )
    assert sum(1 for level, _ in messages if level == "DEBUG") == commits.ATTEMPTS - 1
    found = get(store.view(), "web-1")
    assert found is not None and found.labels == {"by": "them"}


async def test_a_giving_up_writer_that_wins_a_later_race_commits(store: RacingStore) -> None:
    await add(store, "web-1")
    store.races, store.race = commits.ATTEMPTS - 1, relabel("web-1", "them")
    committed = await commit_plan(store, Plan("web-1"), exhausted=Exhausted.GIVE_UP)
    assert committed is not None and len(committed.objects) == 1


def delete(hostname: str) -> Callable[[View], list[Op]]:
    def race(view: View) -> list[Op]:
        found = get(view, hostname)
        assert found is not None
        return [Delete(found)]

    return race


async def test_not_found_is_raised_by_default(store: RacingStore) -> None:
    await add(store, "web-1")
    store.races, store.race = 1, delete("web-1")
    plan = Plan("web-1")
    with pytest.raises(NotFound):
        await commit_plan(store, plan)
    assert plan.calls == 1
    assert get(store.view(), "web-1") is None


async def test_not_found_is_planned_again_when_asked(store: RacingStore) -> None:
    await add(store, "web-1")
    store.races, store.race = 1, delete("web-1")
    plan = Plan("web-1")
    await commit_plan(store, plan, on_not_found=Lost.RETRY)
    assert plan.calls == 2
    found = get(store.view(), "web-1")
    assert found is not None and found.id == "ours-1" and found.labels == {"by": "us"}


def create(hostname: str) -> Callable[[View], list[Op]]:
    return lambda view: [Create(machine(hostname, labels={"by": "them"}))]


async def test_already_exists_is_raised_by_default(store: RacingStore) -> None:
    store.races, store.race = 1, create("web-2")
    with pytest.raises(AlreadyExists):
        await commit_plan(store, Plan("web-2"))
    found = get(store.view(), "web-2")
    assert found is not None and found.labels == {"by": "them"}


async def test_already_exists_is_planned_again_when_asked(store: RacingStore) -> None:
    store.races, store.race = 1, create("web-2")
    plan = Plan("web-2")
    await commit_plan(store, plan, on_already_exists=Lost.RETRY)
    assert plan.calls == 2
    found = get(store.view(), "web-2")
    assert found is not None and found.labels == {"by": "us"}


async def test_every_refused_commit_is_handed_to_the_callback(store: RacingStore) -> None:
    await add(store, "web-1")
    store.races, store.race = 2, relabel("web-1", "them")
    refused: list[tuple[list[Op], type[TreeherdError]]] = []
    await commit_plan(store, Plan("web-1"), refused=lambda ops, error: refused.append((ops, type(error))))
    assert [kind for _, kind in refused] == [VersionConflict, VersionConflict]
    assert all(isinstance(ops[0], Update) for ops, _ in refused)


async def test_other_store_errors_are_raised_whatever_the_rules() -> None:
    closed = RacingStore()
    await closed.open()
    await closed.close()
    refused: list[type[TreeherdError]] = []
    with pytest.raises(Unavailable, match="the store is closed"):
        await commit_plan(
            closed,
            Plan("web-1"),
            on_conflict=Lost.RETRY,
            on_not_found=Lost.RETRY,
            on_already_exists=Lost.RETRY,
            exhausted=Exhausted.GIVE_UP,
            refused=lambda ops, error: refused.append(type(error)),
        )
    assert refused == [Unavailable]
    assert closed.commits == 1


async def test_a_plan_error_reaches_the_caller_untouched(store: RacingStore) -> None:
    def plan(view: View) -> list[Op]:
        raise InvalidInput("hostname: not a host name", field="hostname")

    with pytest.raises(InvalidInput, match="not a host name"):
        await commit_plan(store, plan, on_not_found=Lost.RETRY, on_already_exists=Lost.RETRY)
    assert store.commits == 0


async def test_an_empty_plan_writes_nothing(store: RacingStore) -> None:
    revision = store.revision
    committed = await commit_plan(store, lambda view: [])
    assert committed == Committed(revision=revision, objects=[])
    assert store.commits == 0 and store.revision == revision


# ---- commit_chunks -------------------------------------------------------------------------------------
def creates(*hostnames: str) -> list[Op]:
    return [Create(machine(h, id=f"id-{h}")) for h in hostnames]


def hostnames(store: RacingStore) -> list[str]:
    return sorted(m.hostname for m in store.view().all(Machine))


async def test_writes_are_committed_a_chunk_at_a_time(store: RacingStore) -> None:
    ops = creates(*(f"web-{i}" for i in range(1, 6)))
    revision = store.revision
    assert await commit_chunks(store, ops, "five machines", on_refused_chunk=RefusedChunk.STOP, size=2)
    assert store.commits == 3 and store.revision == revision + 3
    assert len(hostnames(store)) == 5


async def test_the_chunk_size_defaults_to_chunk(store: RacingStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(commits, "CHUNK", 2)
    assert await commit_chunks(store, creates("a", "b", "c"), "three", on_refused_chunk=RefusedChunk.STOP)
    assert store.commits == 2


async def stale_update(store: RacingStore, hostname: str) -> Op:
    """An update of the machine planned before another writer changed it: refused with a conflict."""
    stale = await add(store, hostname)
    await store.commit(relabel(hostname, "them")(store.view()))
    store.commits = 0
    return Update(msgspec.structs.replace(stale, labels={"by": "us"}))


async def test_a_refused_chunk_stops_the_rest(store: RacingStore, caplog: pytest.LogCaptureFixture) -> None:
    ops = [*creates("a", "b"), await stale_update(store, "old"), *creates("c", "d")]
    refused: list[list[Op]] = []
    with caplog.at_level(logging.INFO, logger="treeherd.manager.commits"):
        committed = await commit_chunks(
            store, ops, "the batch", on_refused_chunk=RefusedChunk.STOP, refused=refused.append, size=2
        )
    assert not committed
    assert hostnames(store) == ["a", "b", "old"]
    assert refused == [ops[2:4]]
    assert store.commits == 2
    assert [r.getMessage() for r in caplog.records] == [
        "the batch (writes 3-4 of 5): not applied (machine 'old' changed (version 1 is now 2):"
        " read it again and retry); will decide again from the new state"
    ]


async def test_a_refused_chunk_lets_the_next_ones_through(store: RacingStore) -> None:
    ops = [*creates("a", "b"), await stale_update(store, "old"), *creates("c", "d")]
    refused: list[list[Op]] = []
    committed = await commit_chunks(
        store, ops, "the batch", on_refused_chunk=RefusedChunk.CONTINUE, refused=refused.append, size=2
    )
    assert not committed
    assert hostnames(store) == ["a", "b", "d", "old"]  # "c" shared the refused transaction
    assert refused == [ops[2:4]]
    assert store.commits == 3


class Recording(RacingStore):
    """Records each transaction's machines, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.chunks: list[list[str]] = []

    async def commit(self, ops: Sequence[Op]) -> Committed:
        self.chunks.append([op.object.hostname for op in ops])  # type: ignore[union-attr]
        return await super().commit(ops)


async def test_steps_are_committed_in_the_chunks_of_all_their_writes_at_once() -> None:
    names = [f"web-{i}" for i in range(1, 12)]
    whole, stepwise = Recording(), Recording()
    for opened in (whole, stepwise):
        await opened.open()
    await commit_chunks(whole, creates(*names), "all", on_refused_chunk=RefusedChunk.STOP, size=4)
    steps = [creates(*names[:1]), [], creates(*names[1:7]), creates(*names[7:8]), creates(*names[8:])]
    taken: list[int] = []

    def stepped() -> Iterator[list[Op]]:
        for index, step in enumerate(steps):
            taken.append(index)
            yield step

    assert await commit_steps(stepwise, stepped(), "all", on_refused_chunk=RefusedChunk.STOP, size=4)
    assert stepwise.chunks == whole.chunks == [names[0:4], names[4:8], names[8:]]
    assert taken == [0, 1, 2, 3, 4]


async def test_a_refused_chunk_of_steps_stops_the_steps(
    store: RacingStore, caplog: pytest.LogCaptureFixture
) -> None:
    stale = await stale_update(store, "old")
    taken: list[int] = []

    def stepped() -> Iterator[list[Op]]:
        for index, step in enumerate([creates("a"), [stale], creates("b", "c"), creates("d")]):
            taken.append(index)
            yield step

    with caplog.at_level(logging.INFO, logger="treeherd.manager.commits"):
        committed = await commit_steps(
            store, stepped(), "the plan", on_refused_chunk=RefusedChunk.STOP, size=2
        )
    assert not committed
    assert hostnames(store) == ["old"]  # the first chunk (a and the stale update) was refused whole
    assert taken == [0, 1]  # and no step was taken after it
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["the plan (writes 1-2)"]


async def recording_with(*hostnames: str) -> tuple[Recording, list[Op]]:
    """A recording store holding these machines, and an update of each."""
    opened = Recording()
    await opened.open()
    made = (await opened.commit(creates(*hostnames))).objects
    opened.chunks.clear()
    return opened, [Update(msgspec.structs.replace(m, labels={"by": "us"})) for m in made]


async def test_creations_fill_larger_chunks_than_other_writes() -> None:
    """At most `size` writes that are not creations, at most `creations` writes in all (the first
    chunk at most `size`)."""
    names = [f"web-{i}" for i in range(1, 10)]
    old = [f"old-{i}" for i in range(4)]
    store, updates = await recording_with(*old)
    steps = [creates(*names[:5]), updates[:1], creates(*names[5:7]), updates[1:], creates(*names[7:])]
    assert await commit_steps(
        store, iter(steps), "mixed", on_refused_chunk=RefusedChunk.STOP, size=2, creations=6
    )
    assert (
        store.chunks
        == [
            names[:2],  # the first chunk: `size` in all
            [*names[2:5], "old-0", *names[5:7]],  # six writes in all
            ["old-1", "old-2"],  # two that are not creations
            ["old-3", *names[7:]],  # what is left
        ]
    )
    plain, updates = await recording_with(*old)
    steps = [creates(*names[:5]), updates[:1], creates(*names[5:7]), updates[1:], creates(*names[7:])]
    assert await commit_steps(plain, iter(steps), "mixed", on_refused_chunk=RefusedChunk.STOP, size=2)
    assert [len(chunk) for chunk in plain.chunks] == [2, 2, 2, 2, 2, 2, 1]  # without: `size` of any kind


async def test_no_writes_no_transaction(store: RacingStore) -> None:
    assert await commit_chunks(store, [], "nothing", on_refused_chunk=RefusedChunk.STOP)
    assert store.commits == 0


async def test_the_chunk_grows_with_the_ready_agents_up_to_a_bound(
    store: RacingStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert commits.chunk_size(store.view()) == commits.CHUNK  # no agent yet
    ready = [machine(f"r{i}", agent=AgentStatus(state="ready")) for i in range(300)]
    down = [machine(f"d{i}", agent=AgentStatus(state="down")) for i in range(1_500)]
    await store.commit([Create(m) for m in [*ready, *down, machine("no-agent")]])
    # Forty tasks per ready agent; down agents and machines without one do not count.
    assert commits.CHUNK_PER_AGENT == 40
    assert commits.chunk_size(store.view()) == 40 * 300
    more = [machine(f"m{i}", agent=AgentStatus(state="ready")) for i in range(1_500)]
    await store.commit([Create(m) for m in more])
    assert commits.chunk_size(store.view()) == commits.MAX_CHUNK  # not 72,000
    # Creations go further, up to a bound of their own.
    assert commits.creation_chunk_size(store.view()) == 40 * 1_800
    assert commits.MAX_CHUNK < 40 * 1_800 < commits.MAX_CREATION_CHUNK
    monkeypatch.setattr(commits, "MAX_CREATION_CHUNK", 50_000)
    assert commits.creation_chunk_size(store.view()) == 50_000


def spun_steps(count: int, spin_s: float) -> Iterator[list[Op]]:
    """`count` steps without writes, each spinning `spin_s` of CPU (a plan's work for its slots)."""
    for _ in range(count):
        until = time.perf_counter() + spin_s
        while time.perf_counter() < until:
            pass
        yield []


async def test_the_loop_runs_between_steps_by_time_not_at_every_step(store: RacingStore) -> None:
    async with LoopTurns() as turns:
        await commit_steps(store, spun_steps(40, 0.005), "slow", on_refused_chunk=RefusedChunk.STOP)
    slow = turns.count
    async with LoopTurns() as turns:
        await commit_steps(store, spun_steps(10_000, 0.0), "quick", on_refused_chunk=RefusedChunk.STOP)
    assert slow >= 4  # 200 ms of steps: a turn about every 20 ms
    assert turns.count < 100  # 10,000 quick steps: not a turn for each
