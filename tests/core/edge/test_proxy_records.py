"""Proxy records and alerts: a host's haproxy events are kept (the last 50), a crash loop sets the
record's alert at its first firing and clears it when resolved, and the gateway's own crash-loop alert
follows the same rule; `firing_alerts` lists proxies' crash loops beside services' availability."""

from __future__ import annotations

from datetime import timedelta

import pytest

from treeherd.core.edge import gateway_plans as plans
from treeherd.core.edge.proxy_records import firing_alerts, plan_proxy_event
from treeherd.model.availability import ServiceAvailability
from treeherd.model.errors import InvalidInput
from treeherd.model.gateway import GatewayRecord
from treeherd.model.gateway_requests import GatewayEventIn
from treeherd.model.proxies import RECENT_PROXY_EVENTS, ProxyEventType, ProxyRecord
from treeherd.store.memory import MemoryStore
from treeherd.testing.factories import FIXED_NOW, Ids


async def report(store: MemoryStore, type: ProxyEventType, reason: str, minutes: int = 0) -> ProxyRecord:
    ops = plan_proxy_event(
        store.view(),
        hostname="host-a",
        machine_id="m-a",
        type=type,
        reason=reason,
        figures={"worker_pid": 7},
        now=FIXED_NOW + timedelta(minutes=minutes),
        new_id=Ids("p"),
    )
    committed = await store.commit(ops)
    record = committed.objects[0]
    assert isinstance(record, ProxyRecord)
    return record


async def test_a_restart_creates_the_hosts_record_and_says_the_cause(store: MemoryStore) -> None:
    record = await report(store, "restarted", "proxy restarted: master pid 123 died (signal 9, SIGKILL)")
    assert record.hostname == "host-a" and record.machine_id == "m-a" and record.proxy == "haproxy"
    assert record.summary() == "haproxy proxy restarted: master pid 123 died (signal 9, SIGKILL)"
    assert record.crash_loop is None and len(record.recent) == 1
    again = await report(store, "restarted", "proxy restarted: master pid 124 died (signal 15, SIGTERM)", 1)
    assert again.id == record.id and [e.reason[-8:] for e in again.recent] == ["SIGKILL)", "SIGTERM)"]


async def test_a_crash_loop_alert_is_set_at_its_first_firing_and_cleared_when_resolved(
    store: MemoryStore,
) -> None:
    await report(store, "restarted", "proxy restarted: master pid 1 died (signal 9, SIGKILL)")
    fired = await report(store, "alert_firing", "crash loop: did not stay up 1 time(s)", 1)
    assert fired.crash_loop is not None and fired.crash_loop.since == FIXED_NOW + timedelta(minutes=1)
    await report(store, "error", "haproxy did not start again: Address already in use", 2)
    still = await report(store, "alert_firing", "crash loop: did not stay up 2 time(s)", 3)
    assert still.crash_loop == fired.crash_loop  # firing since the first time, with its first reason
    assert still.summary() == "haproxy alert_firing: crash loop: did not stay up 2 time(s)"
    resolved = await report(store, "alert_resolved", "stayed up 10 s: crash loop over", 4)
    assert resolved.crash_loop is None


async def test_a_resolution_with_no_alert_firing_changes_nothing(store: MemoryStore) -> None:
    """An agent that restarted cannot know whether its previous run left the alert firing: it says the
    loop is over once its master stayed up, and nothing is recorded when none fires."""

    def resolve() -> list[object]:
        return list(
            plan_proxy_event(
                store.view(),
                hostname="host-a",
                machine_id="m-a",
                type="alert_resolved",
                reason="stayed up",
                figures={},
                now=FIXED_NOW,
                new_id=Ids("p"),
            )
        )

    assert resolve() == []  # no record: none is made
    await report(store, "restarted", "proxy restarted: master pid 1 died (signal 9, SIGKILL)")
    assert resolve() == []  # a record, no alert firing
    await report(store, "alert_firing", "crash loop", 1)
    assert len(resolve()) == 1


async def test_a_record_keeps_its_last_events_only(store: MemoryStore) -> None:
    for minute in range(RECENT_PROXY_EVENTS + 5):
        record = await report(store, "restarted", f"proxy restarted: master pid {minute} died", minute)
    assert len(record.recent) == RECENT_PROXY_EVENTS
    assert record.recent[0].reason == "proxy restarted: master pid 5 died"


async def test_an_empty_reason_is_refused(store: MemoryStore) -> None:
    with pytest.raises(InvalidInput, match="reason"):
        await report(store, "restarted", "")


async def test_the_gateways_crash_loop_alert_follows_its_alert_events(store: MemoryStore) -> None:
    async def record(event: GatewayEventIn, minutes: int) -> GatewayRecord:
        ops = plans.plan_record_event(
            store.view(), "edge", event, FIXED_NOW + timedelta(minutes=minutes), Ids("g")
        )
        stored = (await store.commit(ops)).objects[0]
        assert isinstance(stored, GatewayRecord)
        return stored

    fired = await record(
        GatewayEventIn(type="alert_firing", reason="crash loop: nginx", alert="crash_loop"), 0
    )
    assert fired.crash_loop is not None and fired.crash_loop.reason == "crash loop: nginx"
    # An availability alert of a service is not the gateway's own: the crash loop stays as it is.
    other = await record(GatewayEventIn(type="alert_resolved", reason="shop.api: availability is back"), 1)
    assert other.crash_loop == fired.crash_loop
    resolved = await record(
        GatewayEventIn(type="alert_resolved", reason="nginx stayed up", alert="crash_loop"), 2
    )
    assert resolved.crash_loop is None


async def test_firing_alerts_lists_crash_loops_and_availability_alerts(store: MemoryStore) -> None:
    await report(store, "alert_firing", "crash loop: the haproxy master did not stay up")
    ops = plans.plan_record_event(
        store.view(),
        "edge",
        GatewayEventIn(
            type="alert_firing", reason="crash loop: the nginx master did not stay up", alert="crash_loop"
        ),
        FIXED_NOW,
        Ids("g"),
    )
    await store.commit(ops)
    view = store.view()
    services = [
        (
            "edge",
            ServiceAvailability(node_id="n-api", path="shop.api", alert="availability 0.5 is under 0.99"),
        ),
        ("edge", ServiceAvailability(node_id="n-web", path="shop.web")),
    ]
    found = firing_alerts(view.all(GatewayRecord), view.all(ProxyRecord), services)
    assert [(a.kind, a.source, a.subject) for a in found] == [
        ("crash_loop", "edge", "nginx"),
        ("crash_loop", "host-a", "haproxy"),
        ("availability", "edge", "shop.api"),
    ]
    assert found[0].since == FIXED_NOW and found[2].since is None
    await report(store, "alert_resolved", "stayed up", 1)
    view = store.view()
    assert [a.subject for a in firing_alerts(view.all(GatewayRecord), view.all(ProxyRecord), [])] == ["nginx"]
