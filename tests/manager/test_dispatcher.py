"""The dispatcher over an in-memory store, a fake clock and in-memory channels: sessions, status
batching and assignment streams (heartbeats: `test_dispatcher_heartbeats.py`)."""

from __future__ import annotations

import asyncio

import msgspec
import pytest
from dispatcher_harness import (
    MANAGER_URL,
    WAIT,
    Harness,
    RacingStore,
    S,
    drain,
    eventually,
    receive,
    receive_advancing,
    settle,
    status,
)

from treeherd.model.ops import Create, Delete, Op, Update
from treeherd.model.proxies import ProxyRecord
from treeherd.model.services import ClusterSettings, TaskStatus
from treeherd.model.wire import (
    Assignments,
    Heartbeat,
    ProxyEventReport,
    Register,
    SessionRefused,
    SessionStarted,
    StatusAck,
    StatusReport,
)
from treeherd.testing.factories import FIXED_NOW
from treeherd.transport.channel import ChannelClosed


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
