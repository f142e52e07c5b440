"""The canary judge component on a memory store and an availability board filled by the test (as
gateways fill it): a canary failing a fifth of its requests is aborted with the figures on the
service's update status, a healthy one with auto-promote is promoted once its window has passed, one
without auto-promote waits, and stale reports or too few requests change nothing."""

from __future__ import annotations

from datetime import datetime, timedelta

from treeherd.core.edge.availability import stats_of
from treeherd.core.edge.canary_windows import CANARY_WINDOW
from treeherd.manager.availability_board import STALE_S, AvailabilityBoard
from treeherd.manager.canary_judge import CanaryJudge
from treeherd.model.availability import AvailabilityReport, BackendAvailability, ServiceAvailability
from treeherd.model.discovery import Endpoint
from treeherd.model.ops import Create
from treeherd.model.services import (
    CanaryPolicy,
    CanaryStatus,
    Service,
    Task,
    TaskSpec,
    TaskStatus,
    UpdateStatus,
)
from treeherd.store.memory import MemoryStore
from treeherd.testing.factories import FIXED_NOW, node

OLD = TaskSpec(command=["serve"])
NEW = TaskSpec(command=["serve"], env={"V": "2"})


class Clock:
    def __init__(self) -> None:
        self.now = FIXED_NOW

    def __call__(self) -> datetime:
        return self.now


async def canary_service(store: MemoryStore, policy: CanaryPolicy) -> Service:
    """web: 4 slots, slot 1 a canary of spec 2 serving since FIXED_NOW, each task an endpoint."""
    tree = node("shop", id="n1")
    service = Service(
        id="s1",
        created_at=FIXED_NOW,
        updated_at=FIXED_NOW,
        name="web",
        node_id="n1",
        replicas=4,
        task=NEW,
        previous_task=OLD,
        spec_version=2,
        update_status=UpdateStatus(
            state="canary",
            started_at=FIXED_NOW,
            message="canary on 1 of 4 slots",
            canary=CanaryStatus(policy=policy, tasks=1, slots=["1"], serving_at=FIXED_NOW),
        ),
    )
    ops: list[Create] = [Create(tree), Create(service)]
    for slot in range(1, 5):
        ops.append(
            Create(
                Task(
                    id=f"t{slot}",
                    created_at=FIXED_NOW,
                    updated_at=FIXED_NOW,
                    service_id="s1",
                    service_name="web",
                    slot=slot,
                    status=TaskStatus(timestamp=FIXED_NOW),
                    spec=NEW if slot == 1 else OLD,
                    spec_version=2 if slot == 1 else 1,
                )
            )
        )
        ops.append(
            Create(
                Endpoint(
                    id=f"e{slot}",
                    created_at=FIXED_NOW,
                    updated_at=FIXED_NOW,
                    service="web",
                    address="127.0.0.1",
                    port=9000 + slot,
                    source="task",
                    task_id=f"t{slot}",
                )
            )
        )
    await store.commit(ops)
    return service


def report(at: datetime, figures: dict[int, tuple[int, int]]) -> AvailabilityReport:
    """A gateway's report: the canary window of each slot's backend with (requests, errors)."""
    backends = []
    for slot, (requests, errors) in figures.items():
        histogram = [0] * 16
        histogram[2] = requests  # 2-5 ms
        backends.append(
            BackendAvailability(
                address=f"127.0.0.1:{9000 + slot}",
                windows={CANARY_WINDOW: stats_of(requests, errors, histogram)},
                histograms={CANARY_WINDOW: histogram},
            )
        )
    return AvailabilityReport(
        gateway="edge", at=at, services=[ServiceAvailability(node_id="n1", path="shop", backends=backends)]
    )


def status(store: MemoryStore) -> UpdateStatus:
    service = store.view().lookup(Service, "name", "web")
    assert service is not None and service.update_status is not None
    return service.update_status


async def test_a_canary_failing_a_fifth_of_its_requests_is_aborted_with_the_figures(
    store: MemoryStore,
) -> None:
    await canary_service(store, CanaryPolicy(tasks=1, window_s=60, min_requests=50))
    clock = Clock()
    board = AvailabilityBoard(clock=clock)
    judge = CanaryJudge(store, board, clock=clock)
    clock.now = FIXED_NOW + timedelta(seconds=5)
    board.put(report(clock.now, {1: (40, 8), 2: (120, 0), 3: (120, 0), 4: (120, 0)}))
    await judge.judge_all()
    assert status(store).state == "canary"  # 40 requests: too few to judge
    board.put(report(clock.now, {1: (100, 20), 2: (300, 0), 3: (300, 0), 4: (300, 0)}))
    await judge.judge_all()
    aborted = status(store)
    assert aborted.state == "rollback_started"
    assert aborted.message.startswith("canary aborted: availability 20.00 points under the old version's")
    assert "canary (spec 2): 100 requests, 20 5xx, availability 80.00%" in aborted.message
    assert "old (spec 1): 900 requests, 0 5xx, availability 100.00%" in aborted.message
    canary = aborted.canary
    assert canary is not None and canary.new is not None and canary.old is not None
    assert (canary.new.requests, canary.new.errors, canary.old.requests) == (100, 20, 900)
    service = store.view().lookup(Service, "name", "web")
    assert service is not None and service.task == OLD and service.spec_version == 3


async def test_a_healthy_canary_is_promoted_after_its_window_with_auto_promote(store: MemoryStore) -> None:
    await canary_service(store, CanaryPolicy(tasks=1, window_s=60, min_requests=50, auto_promote=True))
    clock = Clock()
    board = AvailabilityBoard(clock=clock)
    judge = CanaryJudge(store, board, clock=clock)
    clock.now = FIXED_NOW + timedelta(seconds=30)
    board.put(report(clock.now, {1: (100, 0), 2: (300, 1), 3: (300, 0), 4: (300, 0)}))
    await judge.judge_all()
    assert status(store).state == "canary"  # within its window
    clock.now = FIXED_NOW + timedelta(seconds=61)
    board.put(report(clock.now, {1: (200, 0), 2: (600, 1), 3: (600, 0), 4: (600, 0)}))
    await judge.judge_all()
    promoted = status(store)
    assert promoted.state == "updating" and promoted.message.startswith(
        "canary promoted (automatically, passed"
    )
    assert promoted.canary is not None and promoted.canary.new is not None
    assert promoted.canary.new.requests == 200


async def test_without_auto_promote_or_with_stale_reports_the_canary_waits(store: MemoryStore) -> None:
    await canary_service(store, CanaryPolicy(tasks=1, window_s=60, min_requests=50))
    clock = Clock()
    board = AvailabilityBoard(clock=clock)
    judge = CanaryJudge(store, board, clock=clock)
    clock.now = FIXED_NOW + timedelta(seconds=61)
    board.put(report(clock.now, {1: (200, 0), 2: (600, 0)}))
    await judge.judge_all()
    assert status(store).state == "canary"  # passed, waiting for service promote
    board.put(report(clock.now, {1: (200, 100), 2: (600, 0)}))
    clock.now += timedelta(seconds=STALE_S + 1)  # the report is stale by now: not judged on
    await judge.judge_all()
    assert status(store).state == "canary"
