"""The dispatcher's heartbeats: deadlines, periods told to agents, the managers' list, a stalled manager,
and a restart that marks nodes unknown."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import pytest
from dispatcher_harness import (
    MANAGER_URL,
    Harness,
    RacingStore,
    answers,
    eventually,
    receive,
    settle,
)

from treeherd.model.objects import AgentStatus, Machine
from treeherd.model.ops import Create, Op
from treeherd.model.services import ClusterSettings
from treeherd.model.wire import (
    Heartbeat,
    HeartbeatAck,
    SessionStarted,
)
from treeherd.store.base import Committed
from treeherd.testing.clock import FakeClock
from treeherd.testing.factories import FIXED_NOW, machine
from treeherd.transport.channel import ChannelClosed


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


class SlowRegistrations(RacingStore):
    """A store in which, once armed, the next write of a machine's record takes `delay` seconds of the
    clock (an etcd cluster electing a leader holds writes that long)."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock
        self.delay = 0.0

    async def commit(self, ops: Sequence[Op]) -> Committed:
        if self.delay and any(isinstance(op.object, Machine) for op in ops):
            delay, self.delay = self.delay, 0.0
            for _ in range(int(delay / 0.25)):  # the manager's loop runs on meanwhile: not a stall
                await self.clock.advance(0.25)
                await settle()
        return await super().commit(ops)


async def test_the_grace_of_a_new_session_runs_from_its_start() -> None:
    """A registration whose record took most of a grace period to write (an etcd cluster electing a
    leader holds writes for seconds): the session that starts then is not ended as late a moment
    later, and the node stays ready for a full grace period from the session's start."""
    clock = FakeClock()
    store = SlowRegistrations(clock)
    await store.open()
    harness = Harness(store, clock)
    try:
        await harness.start()
        store.delay = 14.5  # of the 15 s grace
        agent, started, _ = await harness.connect()
        await clock.advance(1.0)
        await settle()
        assert harness.d.session_id(started.machine_id) == started.session_id
        assert harness.state() == "ready"
        await clock.advance(13.5)  # 14.5 s after the session started
        await settle()
        assert harness.state() == "ready"
        await agent.send(Heartbeat(session_id=started.session_id))
        await settle()
        await clock.advance(15.5)  # past a grace after its heartbeat: now it is late
        await eventually(lambda: harness.state() == "down", "node down")
    finally:
        await harness.stop()
        await store.close()
