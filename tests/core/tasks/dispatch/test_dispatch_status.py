"""The verdict on each task status an agent reports."""

from __future__ import annotations

from datetime import timedelta

import msgspec
import pytest
from test_dispatch_support import S, status, task

from treeherd.core.tasks.dispatch.status import Verdict, check_status
from treeherd.model.states import TaskState


@pytest.mark.parametrize(
    ("stored", "reported", "verdict"),
    [
        (S.ASSIGNED, S.ACCEPTED, Verdict.ACCEPT),
        (S.ASSIGNED, S.RUNNING, Verdict.ACCEPT),  # skipping states is fine
        (S.RUNNING, S.STARTING, Verdict.BACKWARD),
        (S.RUNNING, S.RUNNING, Verdict.DUPLICATE),
        (S.FAILED, S.FAILED, Verdict.DUPLICATE),
        (S.COMPLETE, S.FAILED, Verdict.ENDED),
        (S.ASSIGNED, S.ASSIGNED, Verdict.MANAGER_STATE),
        (S.ASSIGNED, S.PENDING, Verdict.MANAGER_STATE),
    ],
)
def test_status_verdicts_against_the_stored_state(
    stored: TaskState, reported: TaskState, verdict: Verdict
) -> None:
    assert check_status(task(state=stored), "m1", status(reported)) is verdict


def test_status_from_the_wrong_node_or_for_an_unknown_task_is_rejected() -> None:
    assert check_status(task(), "m2", status(S.RUNNING)) is Verdict.NOT_ON_NODE
    assert check_status(task(machine_id=None), "m1", status(S.RUNNING)) is Verdict.NOT_ON_NODE
    assert check_status(None, "m1", status(S.RUNNING)) is Verdict.UNKNOWN_TASK
    assert Verdict.NOT_ON_NODE.rejected and Verdict.UNKNOWN_TASK.rejected and Verdict.MANAGER_STATE.rejected
    assert not Verdict.BACKWARD.rejected and not Verdict.DUPLICATE.rejected


def test_status_behind_or_equal_to_a_queued_one_is_stale_or_waits() -> None:
    queued = status(S.RUNNING)
    assert check_status(task(), "m1", status(S.STARTING), queued=queued) is Verdict.STALE
    assert check_status(task(), "m1", status(S.RUNNING), queued=queued) is Verdict.QUEUED
    assert check_status(task(), "m1", status(S.COMPLETE), queued=queued) is Verdict.ACCEPT


def test_a_health_change_in_the_same_state_is_news_only_if_later():
    running = msgspec.structs.replace(status(S.RUNNING), health="starting")
    stored = msgspec.structs.replace(task(state=S.RUNNING), status=running)
    later = msgspec.structs.replace(
        running, health="healthy", timestamp=running.timestamp + timedelta(seconds=1)
    )
    earlier = msgspec.structs.replace(
        running, health="healthy", timestamp=running.timestamp - timedelta(seconds=1)
    )
    assert check_status(stored, "m1", later) is Verdict.ACCEPT
    assert check_status(stored, "m1", running) is Verdict.DUPLICATE
    assert check_status(stored, "m1", earlier) is Verdict.BACKWARD
    between = msgspec.structs.replace(
        running, health="unhealthy", timestamp=running.timestamp + timedelta(seconds=0.5)
    )
    assert check_status(stored, "m1", between, queued=later) is Verdict.STALE
    assert check_status(stored, "m1", later, queued=later) is Verdict.QUEUED


def test_a_new_message_in_the_same_state_is_news_only_if_later():
    running = status(S.RUNNING)
    stored = msgspec.structs.replace(task(state=S.RUNNING), status=running)
    noted = msgspec.structs.replace(
        running, message="dockerd unreachable", timestamp=running.timestamp + timedelta(seconds=1)
    )
    assert check_status(stored, "m1", noted) is Verdict.ACCEPT
    assert check_status(stored, "m1", running) is Verdict.DUPLICATE
    older = msgspec.structs.replace(noted, timestamp=running.timestamp - timedelta(seconds=1))
    assert check_status(stored, "m1", older) is Verdict.BACKWARD
