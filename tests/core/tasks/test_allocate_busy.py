"""Ports an agent found in use outside the cluster are not handed out again for a while."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec

from treeherd.core.tasks.allocate import BUSY_S, PortPool, busy_port_of, port_in_use_message
from treeherd.model.services import Task, TaskSpec, TaskStatus
from treeherd.model.states import TaskState

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_a_busy_port_is_skipped_until_it_expires() -> None:
    pool = PortPool(30000, 30002)
    pool.mark_busy(30000, NOW)
    assert [pool.take(NOW), pool.take(NOW)] == [30001, 30002]
    pool.release([30001, 30002])
    assert pool.take(NOW) == 30001  # 30000 is still busy
    later = NOW + timedelta(seconds=BUSY_S + 1)
    pool.release([30001])
    assert pool.take(later) == 30002 and pool.take(later) == 30000


def test_the_agents_message_names_the_port_the_allocator_reads_back() -> None:
    named = port_in_use_message(30001, "host-a", "pid 28820, python3")
    assert named == "port 30001 is in use on host-a (pid 28820, python3)"
    assert port_in_use_message(30001, "host-a", "") == "port 30001 is in use on host-a by another process"
    task = Task(
        id="t",
        service_id="s",
        service_name="web",
        spec=TaskSpec(command=["x"]),
        status=TaskStatus(state=TaskState.REJECTED, timestamp=NOW, error=named),
        created_at=NOW,
        updated_at=NOW,
    )
    assert busy_port_of(task) == 30001
    failed = msgspec.structs.replace(
        task, status=msgspec.structs.replace(task.status, state=TaskState.FAILED)
    )
    assert busy_port_of(failed) is None
    other = msgspec.structs.replace(task, status=msgspec.structs.replace(task.status, error="no such file"))
    assert busy_port_of(other) is None
