"""The schedule benchmark's tables in benchmarks/README.md (`schedule.py`, its runs on several stores and
its profiles), one column per result file."""

from __future__ import annotations

from typing import Any

from report_format import load, num, provenance, sec, table
from schedule_figures import beyond_idle

IDLE_ROW = "... beyond their idle rate (that rate, cores)"
SCHEDULE_RUNS = ("schedule-100x10000", "schedule-1000x100000", "schedule-1000x100000-hb30")


def schedule_column(d: dict[str, Any]) -> dict[str, str]:
    s = d["phases"].get("schedule", {})
    lat = d.get("latency_s", {})
    timing = d.get("timing", {})
    split = d.get("manager_cpu_split_s") or {}
    reports = (d.get("agent_reports") or {}).get("statuses_by_state", {})
    stalls = d.get("stalls", {})
    code = d["machine"].get("code")
    commit = code.get("commit") if isinstance(code, dict) else None
    dirty = isinstance(code, dict) and code.get("src_modified")

    def p50(key: str) -> str:
        value = (lat.get(key) or {}).get("p50")
        return "" if value is None else sec(value)

    def longest(key: str) -> str:
        over = [v for _, v in stalls.get(key, [])]
        return f"{max(over):.1f} s" if over else "none"

    pps = d.get("placements_per_second")
    last = timing.get("request_to_last_placement_committed_s")
    return {
        "date, code": f"{d['date'][:10]}, " + (f"`{commit}`" + (" + changes" if dirty else "") if commit else "not recorded"),
        "agents' DB threads": str(d["parameters"].get("agent_db_threads")),
        "heartbeat period": sec(d["parameters"].get("heartbeat_period_s") or d.get("cluster_settings", {}).get("heartbeat_period_s"), 0),
        "all RUNNING (API)": f"**{sec(d.get('seconds_to_all_running'))}**" if d.get("status") == "ok" else f"timeout ({d.get('tasks_running')} running)",
        "placements/s (last placement committed after)": f"**{num(pps)}** ({sec(last)})" if pps else "n/a",
        "first placement committed after": sec(timing.get("request_to_first_placement_committed_s")),
        "create -> RUNNING p50 / p99": f"{sec(d.get('create_to_running_p50_s'))} / {sec(d.get('create_to_running_p99_s'))}",
        "... created -> ASSIGNED, p50": p50("created_to_assigned"),
        "... ASSIGNED -> at its agent, p50": p50("assigned_to_agent"),
        "manager CPU (main thread + others), cores": f"{s['manager_cpu_s']:.1f} s ({s['manager_main_thread_cpu_s']:.1f} + {s['manager_other_threads_cpu_s']:.1f}), {s['manager_cores']:.2f}",
        "... until the last placement / after it": f"{split['until_last_placement']:.1f} s / {split['after_last_placement']:.1f} s" if split else "",
        "manager CPU per task": per_task(d, s, "manager"),
        "manager RSS (max)": f"{d['manager_rss_mb']:.0f} MiB",
        "agents process CPU (DB threads), cores": f"{s['agents_cpu_s']:.1f} s ({s['agents_db_threads_cpu_s']:.1f} s), {s['agents_cores']:.2f}",
        "agents' processes: their CPU per task": harness(d, s),
        IDLE_ROW: idle_rate(d),
        "machine busy (cores): all / other processes": f"{s['machine_busy_cores']:.2f} / {s['other_processes_cores']:.2f}",
        "status updates reported per task": f"{sum(reports.values()) / d['tasks']:.1f}" if reports else "",
        "longest stall over 1 s: manager `/healthz` / agents' loop": f"{longest('manager_healthz_over_1s')} / {longest('agents_loop_lag_over_1s')}",
        "agent sessions": num(d.get("agent_sessions_established") or 0),
    }  # fmt: skip


def harness(d: dict[str, Any], s: dict[str, Any]) -> str:
    """How many processes ran the hollow agents, and their CPU per task (before `--agent-procs`, the
    agents ran in the benchmark's own process, its polls included)."""
    procs = d["parameters"].get("agent_procs")
    where = f"{procs}" if procs else "the benchmark's"
    return f"{where}: {per_task(d, s, 'agents')}"


def idle_rate(d: dict[str, Any]) -> str:
    """The agents' CPU per task less their idle rate over the run (`schedule_figures.beyond_idle`)."""
    # Before `--agent-procs` the agents ran in the benchmark's own process, with its polls.
    figures = beyond_idle(d["phases"], d["tasks"]) if d["parameters"].get("agent_procs") else {}
    if not figures:
        return ""
    return f"{num(figures['agents_cpu_us_per_task_beyond_idle'])} µs ({figures['agents_idle_cores']:.3f})"


def per_task(d: dict[str, Any], s: dict[str, Any], who: str) -> str:
    """CPU µs per task of the manager or the agents, with the kernel's part where the file has it."""
    figure = f"{num(s[f'{who}_cpu_s'] / d['tasks'] * 1e6)} µs"
    system = s.get(f"{who}_system_cpu_s")
    return figure if system is None else f"{figure} ({num(system / d['tasks'] * 1e6)} in the kernel)"


def schedule_table(names: tuple[str, ...]) -> str:
    columns = {name: schedule_column(load(name)) for name in names}
    rows = [[label, *(c[label] for c in columns.values())] for label in next(iter(columns.values()))]
    rows = [row for row in rows if row[0] != IDLE_ROW or any(row[1:])]  # files of agents in their processes
    header = ["", *(f"`{n}`: {load(n)['nodes']:,} x {load(n)['tasks']:,}" for n in names)]
    lines = [provenance(name, load(name)) for name in names]
    return "\n".join(f"- {line}" for line in lines) + "\n\n" + table(header, rows)


def schedule() -> str:
    return schedule_table(SCHEDULE_RUNS)


def schedule_harness() -> str:
    return schedule_table(
        (
            "schedule-100x10000-procs2",
            "schedule-1000x100000-procs2",
            "schedule-5000x1000000-procs2",
            "schedule-5000x1000000-settle20",  # a later commit, with a longer idle phase
            "schedule-5000x1000000-hb30",  # the same, heartbeats every 30 s
        )
    )


def schedule_kernel() -> str:
    return schedule_table(("schedule-5000x1000000-kernel",))


IDLE_RUNS = (
    ("before: an answer per heartbeat, WebSocket pings", "schedule-5000x5000-idle-before"),
    ("after: every second heartbeat answered, no pings", "schedule-5000x5000-idle"),
    ("then: the agents' sends and empty endpoint sets without timers", "schedule-5000x5000-idle-untimed"),
)


def schedule_idle() -> str:
    """The heartbeats' cost: the manager's CPU while every agent is connected and nothing is scheduled."""
    heads, rows = ["", *(label for label, _ in IDLE_RUNS)], []
    runs = [load(name) for _, name in IDLE_RUNS]
    idle = [d["phases"]["idle"] for d in runs]
    period = [d["parameters"].get("heartbeat_period_s") for d in runs]
    rows.append(["agents connected", *(num(d["nodes"]) for d in runs)])
    rows.append(["heartbeat period", *("5 s (default)" if p is None else sec(p, 0) for p in period)])
    rows.append(["idle phase measured", *(sec(i["seconds"], 1) for i in idle)])
    rows.append(["**manager CPU, cores**", *(f"**{i['manager_cores']:.3f}**" for i in idle)])
    rows.append(["agents' processes, cores", *(f"{i['agents_cores']:.3f}" for i in idle)])
    lines = [provenance(name, d) for (_, name), d in zip(IDLE_RUNS, runs, strict=True)]
    return "\n".join(f"- {line}" for line in lines) + "\n\n" + table(heads, rows)


def schedule_db_threads() -> str:
    return schedule_table(("schedule-1000x10000-db-own", "schedule-1000x10000-db-shared4"))


def schedule_profiles() -> str:
    parts = []
    for name in ("schedule-1000x100000-hb30-profile", "schedule-100x10000-profile"):
        d = load(name)
        rows = []
        for file, summary in d.get("profile", {}).items():
            for component, share in list(summary["components_pct"].items())[:8]:
                rows.append([f"`{file}`", component, f"{share:.1f} %"])
            rows.append([f"`{file}`", "(busy samples)", num(summary["samples"])])
        parts.append(
            provenance(name, d) + f" All RUNNING after {sec(d['seconds_to_all_running'])} under py-spy."
        )
        parts.append(table(["profile", "component (first 8)", "share of busy samples"], rows, "llr"))
    return "\n\n".join(parts)


def schedule_stores() -> str:
    runs = [
        ("SQLite (embedded)", "schedule-100x10000-stores-sqlite"),
        ("3-member etcd, --max-txn-ops 128 (etcd's default)", "schedule-100x10000-etcd-stores-etcd3-128"),
        ("3-member etcd, --max-txn-ops 1024", "schedule-100x10000-etcd-stores-etcd3-1024"),
    ]
    rows, heads = [], []
    for label, name in runs:
        d = load(name)
        heads.append(provenance(name, d))
        rows.append(
            [label, num(d["placements_per_second"]), sec(d["seconds_to_all_running"]),
             sec(d["create_to_running_p50_s"]), sec(d["create_to_running_p99_s"]), f"{d['manager_cpu_s']:.1f} s"]
        )  # fmt: skip
    header = ["100 agents x 10,000 tasks, one run each, one after the other", "placements/s", "all running",
              "create -> running p50", "p99", "manager CPU"]  # fmt: skip
    return "\n".join(f"- {head}" for head in heads) + "\n\n" + table(header, rows, "lrrrrr")


def schedule_etcd_specs() -> str:
    """Tasks stored whole (before) and apart from their spec (after) on a 3-member etcd, runs alternated."""
    runs = [
        (f"{label}, run {n}", f"schedule-100x10000-etcd-etcd3-specs-{when}-{n}")
        for n in (1, 2, 3)
        for when, label in (("before", "tasks stored whole"), ("after", "spec stored apart"))
    ]
    rows, heads = [], []
    for label, name in runs:
        d = load(name)
        s = d["phases"]["schedule"]
        heads.append(provenance(name, d))
        rows.append(
            [label, num(d["placements_per_second"]), sec(d["seconds_to_all_running"]),
             sec(d["create_to_running_p50_s"]), sec(d["create_to_running_p99_s"]), f"{d['manager_cpu_s']:.1f} s",
             f"{s['other_processes_cores']:.2f}"]
        )  # fmt: skip
    header = ["100 agents x 10,000 tasks, 3-member etcd, --max-txn-ops 128", "placements/s", "all running",
              "create -> running p50", "p99", "manager CPU", "other processes (cores)"]  # fmt: skip
    return "\n".join(f"- {head}" for head in heads) + "\n\n" + table(header, rows, "lrrrrrr")
