"""The schedule benchmark's figures, from what it observed: the tasks' RUNNING times (the manager's rows or
the agents' records), placements and their rate, latencies, the manager's CPU over time and until the last
placement, stalls, the agents' reports, the polls, and what the plot needs."""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass
from typing import Any

import psutil

from benchlib import distribution, parse_time
from profiling import PySpy, summarize_profile
from schedule_agents import Seen, placement_batches
from schedule_monitor import MIB, Poller, Sampler
from treeherd.model.states import TaskState


@dataclass
class Observed:
    """What one run saw, from the create request on."""

    m: int  # the service's replicas
    seen: dict[str, Seen]  # every task as its agent received it
    started: int  # tasks the agents started
    reports: int  # status reports the agents sent ...
    updates: dict[str, int]  # ... and the task statuses in them, by state
    loop_lag: list[tuple[float, float]]  # (perf_counter, lag) of every agents process's event loop
    poller: Poller
    sampler: Sampler
    manager: psutil.Process
    created: float  # perf_counter of the create request
    created_wall: float  # its epoch time
    schedule_s: float  # from the create request until all RUNNING (or the timeout)
    rows: list[dict[str, Any]] | None  # the manager's task rows (None: it did not answer)
    full: list[dict[str, Any]]  # a few full tasks, to check created_at
    spies: list[PySpy]
    poll_interval: float
    summary_interval: float


def figures(report: dict[str, Any], o: Observed) -> None:
    """Fill `report` with the figures (and `_plot` with what the PNG draws)."""
    if o.rows is not None:
        states = collections.Counter(row["state"] for row in o.rows)
        running_rows = [row for row in o.rows if row["state"] == "running"]
        report["tasks_running"] = len(running_rows)
        report["task_states"] = dict(states)
        running_at = {row["id"]: parse_time(row["since"]) for row in running_rows}
        report["running_timestamps_from"] = "the manager's task rows (since = the agent's RUNNING time)"
    else:  # the last summary poll, and the agents' own start times
        report["tasks_running"] = o.poller.polls[-1][1] if o.poller.polls else 0
        running_at = {i: s.started for i, s in o.seen.items() if not math.isnan(s.started)}
        report["running_timestamps_from"] = "the agents' records (not confirmed by the manager)"
    report["tasks_reached_agents"] = len(o.seen)
    report["tasks_started_by_agents"] = o.started
    mismatched = sum(
        1
        for task in o.full
        if task["id"] in o.seen and abs(parse_time(task["created_at"]) - o.seen[task["id"]].created) > 1e-3
    )
    report["created_at_checked"] = {"tasks": len(o.full), "mismatched": mismatched}

    created_at = [s.created for s in o.seen.values()]
    report["tasks_seen_assigned"] = sum(1 for s in o.seen.values() if s.state == TaskState.ASSIGNED)
    first_created = min(created_at) if created_at else math.nan
    timing: dict[str, Any] = {
        "request_to_first_task_created_s": round(first_created - o.created_wall, 3),
        "request_to_last_task_created_s": round(max(created_at) - o.created_wall, 3) if created_at else None,
    }
    batches = placement_batches(o.seen, o.poller.revisions)
    placed = [(b["committed_by"] - o.created_wall, b["tasks"]) for b in batches]
    report["scheduler_batches"] = [
        {**b, "assigned_at": round(b["assigned_at"] - o.created_wall, 3),
         "committed_after": round(b["committed_after"] - o.created_wall, 3),
         "committed_by": round(b["committed_by"] - o.created_wall, 3)}
        for b in batches
    ]  # fmt: skip
    if batches and sum(b["tasks"] for b in batches) == o.m:
        last = batches[-1]
        report["placements_per_second"] = round(o.m / (last["committed_by"] - o.created_wall), 1)
        timing["request_to_first_placement_committed_s"] = round(
            batches[0]["committed_by"] - o.created_wall, 3
        )
        timing["request_to_last_placement_committed_s"] = round(last["committed_by"] - o.created_wall, 3)
        timing["request_to_last_placement_committed_lower_bound_s"] = round(
            last["committed_after"] - o.created_wall, 3
        )
    else:
        report["placements_per_second"] = None
        report["tasks_placed"] = sum(b["tasks"] for b in batches)
    latencies = [running_at[i] - o.seen[i].created for i in running_at if i in o.seen]
    from_request = [t - o.created_wall for t in running_at.values()]
    latency = distribution(latencies)
    report["create_to_running_p50_s"] = latency.get("p50")
    report["create_to_running_p99_s"] = latency.get("p99")
    report["latency_s"] = {
        "task_created_to_running": latency,
        "request_to_running": distribution(from_request),
        "created_to_assigned": distribution([s.status_at - s.created for s in o.seen.values() if s.state == TaskState.ASSIGNED]),
        "assigned_to_agent": distribution([s.received - s.status_at for s in o.seen.values() if s.state == TaskState.ASSIGNED]),
        "agent_to_running": distribution([running_at[i] - o.seen[i].received for i in running_at if i in o.seen]),
    }  # fmt: skip
    if running_at:
        timing["request_to_last_running_agent_clock_s"] = round(max(running_at.values()) - o.created_wall, 3)
    report["timing"] = timing
    report["manager_rss_mb"] = round(o.sampler.rss_max / MIB, 1)
    report["manager_rss_after_mb"] = round(o.manager.memory_info().rss / MIB, 1)
    # CPU over time (from the sampler), and the manager's CPU until the last placement and after it
    offset = o.created - o.sampler.started_at
    timeline = [{**x, "t": round(x["t"] - offset, 2)} for x in o.sampler.samples if x["t"] - offset >= -1.0]
    step = max(1, len(timeline) // 400)
    report["timeline"] = timeline[::step]
    if report.get("placements_per_second"):
        placed_at = batches[-1]["committed_by"] - o.created_wall
        previous_t = 0.0
        until = after = 0.0
        for x in timeline:
            if x["t"] <= 0:
                previous_t = x["t"]
                continue
            spent = x["manager_cores"] * (x["t"] - max(previous_t, 0.0))
            if x["t"] <= placed_at:
                until += spent
            else:
                after += spent
            previous_t = x["t"]
        report["manager_cpu_split_s"] = {
            "until_last_placement": round(until, 1), "after_last_placement": round(after, 1),
            "note": "integrated from the sampler's rates (0.25 s steps)",
        }  # fmt: skip
    manager_stalls = [
        (t - o.created_wall, v) for t, _, v in o.poller.revisions if t >= o.created_wall and v >= 1.0
    ]
    agent_stalls = [(t - o.created, lag) for t, lag in o.loop_lag if t >= o.created and lag >= 1.0]
    report["stalls"] = {  # seconds since the create request, and how long
        "manager_healthz_over_1s": [(round(t, 1), round(v, 2)) for t, v in manager_stalls][:40],
        "agents_loop_lag_over_1s": [(round(t, 1), round(v, 2)) for t, v in agent_stalls][:40],
    }
    phase = report["phases"].get("schedule", {})
    for who in ("manager", "agents", "harness"):  # the manager's is the figure that matters
        cpu = phase.get(f"{who}_cpu_s")
        report[f"{who}_cpu_us_per_task"] = None if cpu is None else round(cpu / o.m * 1e6, 1)
    report.update(beyond_idle(report["phases"], o.m))
    report["agent_reports"] = {"reports": o.reports, "statuses_by_state": dict(o.updates)}
    report["poll"] = {
        "interval_s": o.poll_interval,
        "summary_interval_s": o.summary_interval,
        "summary_polls": len(o.poller.polls),
        "summary_request_seconds": distribution([p[3] for p in o.poller.polls]),
        "healthz_polls": len(o.poller.revisions),
        "healthz_request_seconds_during_schedule": distribution(
            [r[2] for r in o.poller.revisions if o.created_wall <= r[0] <= o.created_wall + o.schedule_s]
        ),
        "errors": len(o.poller.errors),
        "error_samples": o.poller.errors[:5],
    }
    if o.spies:
        report["profile"] = {spy.path.name: summarize_profile(spy.path, spy.rules) for spy in o.spies}

    # for the plot only (popped before the JSON is written), as seconds since the create request
    report["_plot"] = {
        "polls": o.poller.polls,
        "placed": placed,
        "running_agent_clock": sorted(from_request),
        "latencies": sorted(latencies),
        "samples": o.sampler.samples,
        "created_offset": o.created - o.sampler.started_at,
        "agents_loop_lag": [(t - o.created, lag) for t, lag in o.loop_lag if lag > 0.05],
        "manager_healthz": [(t - o.created_wall, latency) for t, _, latency in o.poller.revisions],
    }


def beyond_idle(phases: dict[str, Any], tasks: int) -> dict[str, float]:
    """The agents' processes' CPU per task less what they spent idle (heartbeats, the session's timers) at
    the rate of the idle phase before the service, over the schedule phase: the tasks' own cost, apart from
    what the agents cost with no task at all (at 5,000 agents, about 0.08 cores for the run's length).
    Empty when either phase was not measured."""
    idle, schedule = phases.get("idle") or {}, phases.get("schedule") or {}
    if not idle.get("seconds") or idle.get("agents_cpu_s") is None or schedule.get("agents_cpu_s") is None:
        return {}
    rate = idle["agents_cpu_s"] / idle["seconds"]
    spent = schedule["agents_cpu_s"] - rate * schedule["seconds"]
    return {
        "agents_idle_cores": round(rate, 3),
        "agents_cpu_us_per_task_beyond_idle": round(spent / tasks * 1e6, 1),
    }
