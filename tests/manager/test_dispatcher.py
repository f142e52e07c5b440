"""The dispatcher over an in-memory store, a fake clock and in-memory channels: sessions, heartbeats,
restarts, status batching and assignment streams."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import timedelta
from typing import Any, TypeVar

import msgspec
import pytest

from treeherd.manager.dispatcher import Dispatcher
from treeherd.model.objects import AgentStatus, Machine
from treeherd.model.ops import Create, Delete, Op, Update
from treeherd.model.proxies import ProxyRecord
from treeherd.model.services import ClusterSettings, Service, Task, TaskSpec, TaskStatus
from treeherd.model.states import TaskState
from treeherd.model.wire import (
    Assignments,
    Heartbeat,
    HeartbeatAck,
    ProxyEventReport,
    Register,
    SessionRefused,
    SessionStarted,
    StatusAck,
    StatusReport,
    TaskStatusUpdate,
)
from treeherd.store.base import Committed
from treeherd.store.memory import MemoryStore
from treeherd.testing import waiting
from treeherd.testing.channels import MemoryChannel, channel_pair
from treeherd.testing.clock import FakeClock
from treeherd.testing.factories import FIXED_NOW, Ids, machine, node
from treeherd.transport.channel import ChannelClosed

WAIT = 5.0
MANAGER_URL = "http://127.0.0.1:7400"
S = TaskState
M = TypeVar("M")


eventually = functools.partial(waiting.eventually, timeout_s=WAIT, poll_s=0.001)


async def settle() -> None:
    """Let every ready task take its next steps."""
    for _ in range(20):
        await asyncio.sleep(0)


class RacingStore(MemoryStore):
    """A store in which, once armed, another writer's commit lands just before the next task write."""

    def __init__(self) -> None:
        super().__init__()
        self.race: Callable[[], Sequence[Op]] | None = None

    async def commit(self, ops: Sequence[Op]) -> Committed:
        race = self.race
        if race is not None and any(isinstance(op.object, Task) for op in ops):
            self.race = None
            await super().commit(race())
        return await super().commit(ops)


class Harness:
    def __init__(self, store: MemoryStore, clock: FakeClock) -> None:
        self.store = store
        self.clock = clock
        self.ids = Ids("id")
        self.dispatcher: Dispatcher | None = None
        self.running: asyncio.Task[None] | None = None
        self.serving: list[asyncio.Task[None]] = []

    @property
    def d(self) -> Dispatcher:
        assert self.dispatcher is not None
        return self.dispatcher

    async def start(self, managers: Callable[[], list[str]] | None = None) -> Dispatcher:
        self.dispatcher = Dispatcher(
            self.store,
            managers=managers or [MANAGER_URL],
            clock=self.clock.now,
            monotonic=self.clock.monotonic,
            sleep=self.clock.sleep,
            rand=lambda: 0.0,  # period 5 s, grace 15 s
            ids=self.ids,
        )
        self.running = asyncio.create_task(self.dispatcher.run())
        await eventually(lambda: self.d._ready.is_set(), "dispatcher ready")
        return self.dispatcher

    async def stop(self) -> None:
        if self.running is not None:
            self.d.stop()
            await asyncio.wait_for(self.running, WAIT)
            self.running = None
        await asyncio.wait_for(asyncio.gather(*self.serving), WAIT)
        self.serving.clear()

    def open(self) -> MemoryChannel:
        agent, manager = channel_pair()
        self.serving.append(asyncio.create_task(self.d.serve(manager, address="10.0.0.9")))
        return agent

    async def connect(
        self, hostname: str = "web-1", **fields: Any
    ) -> tuple[MemoryChannel, SessionStarted, Assignments]:
        """A registered agent: its channel, its session, and the full assignment set it got first."""
        agent = self.open()
        await agent.send(Register(hostname=hostname, **fields))
        started = await receive(agent, SessionStarted)
        full = await receive(agent, Assignments)
        assert full.full and full.sequence == 1
        return agent, started, full

    def machine(self, hostname: str = "web-1") -> Machine:
        found = self.store.view().lookup(Machine, "hostname", hostname)
        assert found is not None
        return found

    def state(self, hostname: str = "web-1") -> str:
        agent = self.machine(hostname).agent
        assert agent is not None
        return agent.state

    def task(self, task_id: str) -> Task:
        found = self.store.view().get(Task, task_id)
        assert found is not None
        return found

    async def service(self) -> None:
        await self.store.commit([Create(node("apps", id="n1"))])
        await self.store.commit(
            [
                Create(
                    Service(
                        id="svc",
                        created_at=FIXED_NOW,
                        updated_at=FIXED_NOW,
                        name="web",
                        node_id="n1",
                        task=TaskSpec(command=["sleep", "60"]),
                    )
                )
            ]
        )

    async def assign(self, task_id: str, machine_id: str, state: TaskState = S.ASSIGNED) -> Task:
        created = Task(
            id=task_id,
            created_at=FIXED_NOW,
            updated_at=FIXED_NOW,
            service_id="svc",
            service_name="web",
            machine_id=machine_id,
            status=TaskStatus(state=state, timestamp=FIXED_NOW),
            spec=TaskSpec(command=["sleep", "60"]),
        )
        committed = await self.store.commit([Create(created)])
        stored = committed.objects[0]
        assert isinstance(stored, Task)
        return stored


async def receive(agent: MemoryChannel, kind: type[M]) -> M:
    """The next message of `kind`, skipping others (heartbeat acks, assignments...)."""

    async def loop() -> M:
        while True:
            message = await agent.receive()
            if isinstance(message, kind):
                return message

    return await asyncio.wait_for(loop(), WAIT)


async def answers(agent: MemoryChannel) -> list[HeartbeatAck]:
    """The heartbeat answers the agent has been sent so far (others are skipped), once the dispatcher
    has settled: none may still be on its way."""
    await settle()
    found: list[HeartbeatAck] = []
    while True:
        try:
            message = await asyncio.wait_for(agent.receive(), 0.05)
        except TimeoutError:
            return found
        if isinstance(message, HeartbeatAck):
            found.append(message)


async def receive_advancing(agent: MemoryChannel, clock: FakeClock, kind: type[M], step: float = 0.05) -> M:
    """The next message of `kind`, moving the fake clock on in small steps while waiting."""

    async def loop() -> M:
        while True:
            try:
                message = await asyncio.wait_for(agent.receive(), 0.01)
            except TimeoutError:
                await clock.advance(step)
                continue
            if isinstance(message, kind):
                return message

    return await asyncio.wait_for(loop(), WAIT)


def drain(agent: MemoryChannel) -> list[Any]:
    """Every message already delivered to the agent."""
    queue: asyncio.Queue[Any] = agent._inbox
    found = []
    while not queue.empty():
        found.append(queue.get_nowait())
    return found


def status(task_id: str, state: TaskState, message: str = "") -> TaskStatusUpdate:
    return TaskStatusUpdate(
        task_id=task_id, status=TaskStatus(state=state, timestamp=FIXED_NOW, message=message)
    )


@pytest.fixture
async def store() -> AsyncIterator[MemoryStore]:
    opened = RacingStore()
    await opened.open()
    yield opened
    await opened.close()


@pytest.fixture
async def harness(store: MemoryStore) -> AsyncIterator[Harness]:
    created = Harness(store, FakeClock())
    yield created
    await created.stop()


# ---- sessions -------------------------------------------------------------------------------------
async def test_an_agents_haproxy_events_are_recorded_in_order_on_its_hosts_proxy_record(
    harness: Harness,
) -> None:
    await harness.start()
    agent, started, _ = await harness.connect("web-1")
    sent = [
        ("restarted", "proxy restarted: master pid 123 died (signal 9, SIGKILL)"),
        ("alert_firing", "crash loop: the haproxy master did not stay up 1 time(s) in a row"),
        ("alert_resolved", "the haproxy master stayed up 10 s after its restart: crash loop over"),
        ("restarted", "proxy restarted: master pid 130 stopped answering its CLI socket (timed out)"),
    ]
    for event, reason in sent:
        await agent.send(ProxyEventReport(session_id=started.session_id, event=event, reason=reason))

    def record() -> ProxyRecord | None:
        return harness.store.view().lookup(ProxyRecord, "hostname", "web-1")

    await eventually(lambda: (r := record()) is not None and len(r.recent) == 4, "four recorded events")
    stored = record()
    assert stored is not None and stored.machine_id == started.machine_id
    assert [(e.type, e.reason) for e in stored.recent] == sent
    assert stored.crash_loop is None  # fired, then resolved


async def test_register_creates_a_ready_machine_and_starts_a_session(harness: Harness) -> None:
    await harness.start()
    _, started, _ = await harness.connect("web-1", ips=["10.0.0.9"], cpus=4, labels={"zone": "a"})
    machine = harness.machine()
    assert started.machine_id == machine.id and started.session_id
    assert started.heartbeat_period_s == 5.0 and started.managers == [MANAGER_URL]
    assert (
        machine.agent is not None and machine.agent.state == "ready" and machine.agent.address == "10.0.0.9"
    )
    assert machine.cpus == 4 and machine.labels == {"zone": "a"}
    assert harness.d.session_id(machine.id) == started.session_id


async def test_first_message_must_be_register(harness: Harness) -> None:
    await harness.start()
    agent = harness.open()
    await agent.send(Heartbeat(session_id="nope"))
    refused = await receive(agent, SessionRefused)
    assert refused.code == "protocol"
    with pytest.raises(ChannelClosed):
        await asyncio.wait_for(agent.receive(), WAIT)


async def test_invalid_hostname_is_refused(harness: Harness) -> None:
    await harness.start()
    agent = harness.open()
    await agent.send(Register(hostname="no spaces allowed"))
    refused = await receive(agent, SessionRefused)
    assert refused.code == "invalid" and "hostname" in refused.detail


async def test_registrations_are_rate_limited_per_hostname(harness: Harness) -> None:
    await harness.start()
    for _ in range(3):
        agent, _, _ = await harness.connect("web-1")
        await harness.clock.advance(1.0)
    agent = harness.open()
    await agent.send(Register(hostname="web-1"))
    refused = await receive(agent, SessionRefused)
    assert refused.code == "rate_limited" and refused.retry_after_s == pytest.approx(5.0)
    await harness.connect("web-2")  # other hosts are not affected
    await harness.clock.advance(5.0)
    await harness.connect("web-1")


async def test_a_second_session_replaces_the_first(harness: Harness) -> None:
    await harness.start()
    first, started1, _ = await harness.connect("web-1")
    second, started2, _ = await harness.connect("web-1")
    assert started2.machine_id == started1.machine_id and started2.session_id != started1.session_id
    with pytest.raises(ChannelClosed):
        await receive(first, SessionStarted)
    assert harness.d.session_id(started1.machine_id) == started2.session_id
    # The old session's id is no longer accepted... on the new channel either.
    await second.send(Heartbeat(session_id=started1.session_id))
    refused = await receive(second, SessionRefused)
    assert refused.code == "session_invalid"


# ---- heartbeats -----------------------------------------------------------------------------------
async def test_heartbeats_keep_a_node_ready_and_silence_marks_it_down(harness: Harness) -> None:
    await harness.start()
    agent, started, _ = await harness.connect()
    for number in range(1, 5):  # 40 s of regular heartbeats: well past one grace period
        await harness.clock.advance(10.0)
        await agent.send(Heartbeat(session_id=started.session_id))
        # Every second one is answered; an unanswered one moves the node's deadline all the same.
        assert [ack.period_s for ack in await answers(agent)] == ([5.0] if number % 2 == 0 else [])
    assert harness.state() == "ready"
    await harness.clock.advance(14.5)
    await settle()
    assert harness.state() == "ready"
    await harness.clock.advance(1.0)
    await eventually(lambda: harness.state() == "down", "node down")
    agent_status = harness.machine().agent
    assert agent_status is not None and agent_status.since is not None
    # Marked down at its deadline (55 s: the last heartbeat at 40 s + a 15 s grace), not at the advance.
    assert agent_status == AgentStatus(
        state="down",
        message="heartbeat failure",
        address="10.0.0.9",
        since=harness.clock.now() - timedelta(seconds=0.5),
    )
    with pytest.raises(ChannelClosed):  # the session was closed
        await receive(agent, SessionStarted)
    assert harness.d.session_id(started.machine_id) is None


async def test_a_shorter_period_applies_from_the_agents_next_heartbeat(harness: Harness) -> None:
    await harness.start()
    agent, started, _ = await harness.connect()  # told 5 s
    await harness.store.commit(
        [Create(ClusterSettings(id="c", created_at=FIXED_NOW, updated_at=FIXED_NOW, heartbeat_period_s=1.0))]
    )
    await harness.clock.advance(5.0)
    await agent.send(Heartbeat(session_id=started.session_id))
    assert (await receive(agent, HeartbeatAck)).period_s == 1.0
    # The agent was sleeping its old 5 s period when the ack came: its next heartbeat comes 5 s later,
    # past the new 3 s grace but within the old one. It must not be marked down for that.
    await harness.clock.advance(5.0)
    await settle()
    assert harness.state() == "ready"
    await agent.send(Heartbeat(session_id=started.session_id))
    assert await answers(agent) == []  # nothing new to tell: the next one is answered
    # From now on the 1 s period (3 s grace) holds.
    await harness.clock.advance(3.5)
    await eventually(lambda: harness.state() == "down", "node down after the new grace")


async def test_agents_are_told_when_the_managers_change(harness: Harness) -> None:
    managers = [MANAGER_URL, "http://m2:7400"]
    await harness.start(lambda: list(managers))
    agent, started, _ = await harness.connect()
    assert started.managers == managers
    await agent.send(Heartbeat(session_id=started.session_id))
    assert await answers(agent) == []  # nothing new: the first heartbeat goes unanswered
    await harness.clock.advance(5.0)
    await agent.send(Heartbeat(session_id=started.session_id))
    assert [ack.managers for ack in await answers(agent)] == [None]  # the second one is: nothing repeated
    managers.append("http://m3:7400")  # a third manager joined
    await harness.clock.advance(5.0)
    await agent.send(Heartbeat(session_id=started.session_id))
    # News is answered at once, whatever the count.
    assert [ack.managers for ack in await answers(agent)] == [
        [MANAGER_URL, "http://m2:7400", "http://m3:7400"]
    ]
    for _ in range(2):
        await harness.clock.advance(5.0)
        await agent.send(Heartbeat(session_id=started.session_id))
    assert [ack.managers for ack in await answers(agent)] == [None]


async def test_time_the_manager_was_stalled_does_not_count_against_nodes(harness: Harness) -> None:
    await harness.start()
    agent, started, _ = await harness.connect()
    # The manager's loop is blocked for 30 s (twice the grace); the heartbeat the agent sent meanwhile
    # is read only afterwards. The node must not be marked down for the manager's own stall.
    await harness.clock.stall(30.0)
    await settle()
    assert harness.state() == "ready"
    await agent.send(Heartbeat(session_id=started.session_id))
    await settle()
    await harness.clock.advance(10.0)
    await settle()
    assert harness.state() == "ready"
    # Real silence after that still counts.
    await harness.clock.advance(10.0)
    await eventually(lambda: harness.state() == "down", "node down")


async def test_restart_marks_nodes_unknown_with_a_doubled_grace(harness: Harness) -> None:
    await harness.start()
    await harness.connect("web-1")
    await harness.connect("web-2")
    await harness.stop()
    await harness.store.commit(
        [Create(machine("web-3", agent=AgentStatus(state="down"))), Create(machine("no-agent"))]
    )

    await harness.start()  # a new dispatcher: the agents have not reconnected yet
    assert harness.state("web-1") == "unknown" and harness.state("web-2") == "unknown"
    assert harness.state("web-3") == "down" and harness.machine("no-agent").agent is None
    await harness.clock.advance(20.0)
    await harness.connect("web-2")  # this one comes back within the grace
    await harness.clock.advance(9.5)  # 29.5 s after the start: still within the doubled grace
    await settle()
    assert harness.state("web-1") == "unknown"
    await harness.clock.advance(1.0)
    await eventually(lambda: harness.state("web-1") == "down", "web-1 down")
    agent = harness.machine("web-1").agent
    assert agent is not None and agent.message == "no heartbeat since the dispatcher started"
    assert harness.state("web-2") == "ready"  # on a normal grace since it registered (at 20 s + 15 s)
    await harness.clock.advance(5.0)
    await eventually(lambda: harness.state("web-2") == "down", "web-2 down")


# ---- task status ----------------------------------------------------------------------------------
async def test_a_report_after_a_quiet_interval_is_written_at_once_then_reports_are_batched(
    harness: Harness,
) -> None:
    await harness.start()
    await harness.service()
    agent, started, _ = await harness.connect()
    for index in range(6):
        await harness.assign(f"t{index}", started.machine_id)
    before = harness.store.revision
    # Nothing was written for a while: the first report is written at once (no clock movement).
    await agent.send(
        StatusReport(session_id=started.session_id, updates=[status("t0", S.RUNNING)], report_id=1)
    )
    assert (await receive(agent, StatusAck)).report_id == 1
    assert harness.store.revision == before + 1
    # Within the interval after that write, reports wait for the next batch.
    for index in range(1, 6):
        report = StatusReport(
            session_id=started.session_id, updates=[status(f"t{index}", S.RUNNING)], report_id=index + 1
        )
        await agent.send(report)
    await eventually(lambda: len(harness.d._batcher) == 5, "reports queued")
    await settle()
    assert harness.store.revision == before + 1
    assert not [m for m in drain(agent) if isinstance(m, StatusAck)]  # nothing is acknowledged yet

    await harness.clock.advance(0.1)
    acks = {(await receive(agent, StatusAck)).report_id for _ in range(5)}
    assert acks == {2, 3, 4, 5, 6}
    assert harness.store.revision == before + 2  # one transaction for the five
    assert all(harness.task(f"t{i}").status.state == S.RUNNING for i in range(6))


async def test_a_full_batch_is_written_at_once(harness: Harness) -> None:
    settings = ClusterSettings(id="cluster", created_at=FIXED_NOW, updated_at=FIXED_NOW, status_batch_max=3)
    await harness.store.commit([Create(settings)])
    await harness.start()
    await harness.service()
    agent, started, _ = await harness.connect()
    for index in range(3):
        await harness.assign(f"t{index}", started.machine_id)
    updates = [status(f"t{i}", S.STARTING) for i in range(3)]
    await agent.send(StatusReport(session_id=started.session_id, updates=updates, report_id=7))
    ack = await receive(agent, StatusAck)  # no clock movement needed
    assert ack.report_id == 7
    assert all(harness.task(f"t{i}").status.state == S.STARTING for i in range(3))


async def test_stale_foreign_and_manager_statuses_are_dropped_and_acknowledged(harness: Harness) -> None:
    await harness.start()
    await harness.service()
    agent, started, _ = await harness.connect("web-1")
    _, other, _ = await harness.connect("web-2")
    await harness.assign("mine", started.machine_id, state=S.RUNNING)
    await harness.assign("theirs", other.machine_id)
    before = harness.store.revision
    for report_id, update in enumerate(
        [
            status("mine", S.STARTING),
            status("mine", S.RUNNING),
            status("theirs", S.RUNNING),
            status("mine", S.ASSIGNED),
        ],
        start=1,
    ):
        await agent.send(StatusReport(session_id=started.session_id, updates=[update], report_id=report_id))
        assert (await receive(agent, StatusAck)).report_id == report_id
    await settle()
    assert harness.store.revision == before
    assert (
        harness.task("mine").status.state == S.RUNNING and harness.task("theirs").status.state == S.ASSIGNED
    )


async def test_a_version_conflict_on_flush_reapplies_the_status(harness: Harness, store: RacingStore) -> None:
    await harness.start()
    await harness.service()
    agent, started, _ = await harness.connect()
    await harness.assign("t1", started.machine_id)

    def orchestrator_stops_it() -> list[Op]:
        current = harness.task("t1")
        return [Update(msgspec.structs.replace(current, desired_state=S.SHUTDOWN))]

    store.race = orchestrator_stops_it
    await agent.send(
        StatusReport(session_id=started.session_id, updates=[status("t1", S.RUNNING)], report_id=1)
    )
    assert (await receive(agent, StatusAck)).report_id == 1  # written at once: nothing was written lately
    assert store.race is None  # the race happened
    final = harness.task("t1")
    assert final.desired_state == S.SHUTDOWN and final.status.state == S.RUNNING


# ---- assignments ----------------------------------------------------------------------------------
async def test_full_assignments_then_increments(harness: Harness) -> None:
    await harness.start()
    await harness.service()
    await harness.connect("web-1")  # creates the machine
    machine_id = harness.machine().id
    await harness.assign("early", machine_id)
    await harness.assign("pending", machine_id, state=S.PENDING)  # not the agent's business yet

    fresh, _, full = await harness.connect("web-1")  # a new session starts with the full set
    assert [t.id for t in full.updated] == ["early"]

    # Two assignments in quick succession are coalesced into one increment.
    await harness.assign("a", machine_id)
    await harness.assign("b", machine_id)
    await settle()
    message = await receive_advancing(fresh, harness.clock, Assignments)
    assert not message.full and message.sequence == 2
    assert sorted(t.id for t in message.updated) == ["a", "b"] and message.removed == []

    # The scheduler assigns the pending one; the orchestrator asks for "a" to stop.
    pending = harness.task("pending")
    await harness.store.commit(
        [Update(msgspec.structs.replace(pending, status=TaskStatus(state=S.ASSIGNED, timestamp=FIXED_NOW)))]
    )
    a = harness.task("a")
    await harness.store.commit([Update(msgspec.structs.replace(a, desired_state=S.SHUTDOWN))])
    await settle()
    message = await receive_advancing(fresh, harness.clock, Assignments)
    assert message.sequence == 3
    assert {t.id: t.desired_state for t in message.updated} == {"pending": S.RUNNING, "a": S.SHUTDOWN}

    # The agent's own status report is not echoed back; a deletion is a removal.
    session_id = harness.d.session_id(machine_id)
    assert session_id is not None
    await fresh.send(StatusReport(session_id=session_id, updates=[status("b", S.RUNNING)], report_id=1))
    await receive_advancing(fresh, harness.clock, StatusAck)
    await harness.store.commit([Delete(harness.task("early"))])
    await settle()
    message = await receive_advancing(fresh, harness.clock, Assignments)
    assert message.sequence == 4 and message.removed == ["early"] and message.updated == []


async def test_tasks_of_other_machines_are_not_sent(harness: Harness) -> None:
    await harness.start()
    await harness.service()
    agent, started, _ = await harness.connect("web-1")
    _, other, _ = await harness.connect("web-2")
    await harness.assign("theirs", other.machine_id)
    await harness.assign("mine", started.machine_id)
    await settle()
    message = await receive_advancing(agent, harness.clock, Assignments)
    assert [t.id for t in message.updated] == ["mine"]


async def test_stop_closes_every_session(harness: Harness) -> None:
    await harness.start()
    agent, _, _ = await harness.connect()
    await harness.stop()
    with pytest.raises(ChannelClosed):
        await receive(agent, SessionStarted)
    # A stopped dispatcher refuses new sessions.
    late = harness.open()
    await late.send(Register(hostname="web-9"))
    refused = await receive(late, SessionRefused)
    assert refused.code == "unavailable"
