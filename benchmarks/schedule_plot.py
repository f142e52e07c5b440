"""The schedule benchmark's outputs: the JSON, the four-panel PNG and the printed summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchlib import percentile


def write_outputs(report: dict[str, Any], json_path: Path, png_path: Path | None) -> Path | None:
    """Write the JSON, and the PNG if asked for and there is something to draw; returns the PNG's path."""
    plot_data = report.pop("_plot", None)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    if png_path is None or not plot_data:
        return None
    png_path.parent.mkdir(parents=True, exist_ok=True)
    plot(report, plot_data, png_path)
    return png_path


def plot(report: dict[str, Any], data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, m = report["nodes"], report["tasks"]
    fig, ((ax_run, ax_lat), (ax_cpu, ax_stall)) = plt.subplots(2, 2, figsize=(16, 10))
    fig.suptitle(
        f"treeherd schedule: {m:,} hollow tasks on {n:,} agents (real WebSocket agents in"
        f" {report['parameters'].get('agent_procs', 1)} processes),"
        f" SQLite store, {report['machine']['cpu_count']} CPUs ({report['date'][:10]})"
    )

    def cumulative(times: list[float]) -> tuple[list[float], list[int]]:
        return [0.0, *times], [0, *range(1, len(times) + 1)]

    if data["placed"]:
        xs, ys, done = [0.0], [0], 0
        for at, count in data["placed"]:
            done += count
            xs.append(at)
            ys.append(done)
        ax_run.step(xs, ys, where="post", label="ASSIGNED (placement batches committed)")
    if data["running_agent_clock"]:
        ax_run.step(
            *cumulative(data["running_agent_clock"]), where="post", label="RUNNING (agent's timestamp)"
        )
    polls = data["polls"]
    if polls:
        ax_run.plot(
            [p[0] for p in polls], [p[1] for p in polls], "o-", ms=3, label="RUNNING (API summary polls)"
        )
    ax_run.axhline(m, color="grey", lw=0.8, ls=":")
    ax_run.set_xlabel("seconds since the create request")
    ax_run.set_ylabel("tasks")
    ax_run.set_title("Tasks over time")
    ax_run.grid(True, alpha=0.3)
    ax_run.legend(loc="lower right", fontsize=8)

    latencies = data["latencies"]
    if latencies:
        ys = [(i + 1) / len(latencies) for i in range(len(latencies))]
        ax_lat.plot(latencies, ys, label="task created -> RUNNING")
        for p in (50, 99):
            v = percentile(latencies, p)
            ax_lat.axvline(v, ls="--", lw=0.8, color="grey")
            ax_lat.annotate(
                f"p{p} {v:.2f} s", (v, p / 100), fontsize=8, xytext=(3, -12), textcoords="offset points"
            )
    ax_lat.set_xlabel("seconds")
    ax_lat.set_ylabel("fraction of tasks")
    ax_lat.set_title("Create -> RUNNING latency (CDF)")
    ax_lat.grid(True, alpha=0.3)
    ax_lat.legend(loc="lower right", fontsize=8)

    samples = data["samples"]
    offset = data["created_offset"]
    if samples:
        ts = [s["t"] - offset for s in samples]
        # A sampler held up between reading the clock and a CPU counter shows a spike and then a dip
        # (their sum is right): the plot clips rates to the machine's cores.
        cores = report["machine"]["cpu_count"] or 2

        def clip(key: str) -> list[float]:
            return [min(max(s[key], 0.0), cores) for s in samples]

        ax_cpu.plot(ts, clip("manager_cores"), label="manager process")
        ax_cpu.plot(ts, clip("agents_cores"), label="agents' processes")
        ax_cpu.plot(ts, clip("machine_cores"), label="whole machine", color="black", lw=0.8)
        ax_rss = ax_cpu.twinx()
        ax_rss.plot(ts, [s["manager_rss_mb"] for s in samples], color="tab:red", ls=":", label="manager RSS")
        ax_rss.set_ylabel("manager RSS (MiB)", color="tab:red")
        ax_cpu.axvline(0, color="grey", lw=0.8, ls="--")
    ax_cpu.set_xlabel("seconds since the create request (agents connect before 0)")
    ax_cpu.set_ylabel("CPU (cores)")
    ax_cpu.set_title("CPU use and manager RSS")
    ax_cpu.grid(True, alpha=0.3)
    ax_cpu.legend(loc="upper left", fontsize=8)

    healthz = data["manager_healthz"]
    if healthz:
        ax_stall.plot([t for t, _ in healthz], [v for _, v in healthz], ".", ms=3,
                      label="manager: GET /healthz round trip (its event loop's delay)")  # fmt: skip
    lag = data["agents_loop_lag"]
    if lag:
        ax_stall.plot([t for t, _ in lag], [v for _, v in lag], ".", ms=3,
                      label="agents: event loop lag (samples > 50 ms)")  # fmt: skip
    settings = report.get("cluster_settings") or {}
    grace = settings.get("heartbeat_period_s", 5.0) * settings.get("heartbeat_grace_multiplier", 3.0)
    ax_stall.axhline(grace, color="tab:red", ls="--", lw=0.8, label=f"heartbeat grace ({grace:g} s)")
    ax_stall.set_yscale("log")
    ax_stall.set_xlabel("seconds since the create request")
    ax_stall.set_ylabel("seconds (log)")
    ax_stall.set_title("Stalls: how late each side answers")
    ax_stall.grid(True, which="both", alpha=0.3)
    ax_stall.legend(loc="upper left", fontsize=8)

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def summary_lines(report: dict[str, Any]) -> list[str]:
    s = report.get("phases", {}).get("schedule", {})
    lat = report.get("latency_s", {}).get("task_created_to_running", {})

    def fmt(value: Any, spec: str) -> str:
        return "n/a" if value is None else format(value, spec)

    return [
        f"schedule: {report['tasks']:,} tasks on {report['nodes']:,} agents: {report.get('status')}",
        f"  all RUNNING (API) after  {fmt(report.get('seconds_to_all_running'), '.2f')} s"
        f" (acknowledged to the agents after {fmt(report.get('seconds_to_all_running_acknowledged'), '.2f')} s);"
        f" tasks running {report.get('tasks_running', 0):,}",
        f"  placements/s             {fmt(report.get('placements_per_second'), ',.0f')}"
        f" ({len(report.get('scheduler_batches', []))} placement transactions)",
        f"  create -> RUNNING        p50 {fmt(lat.get('p50'), '.2f')} s, p99 {fmt(lat.get('p99'), '.2f')} s",
        f"  manager CPU per task     {fmt(report.get('manager_cpu_us_per_task'), ',.0f')} µs",
        f"  manager CPU              {fmt(s.get('manager_cpu_s'), '.1f')} s"
        f" ({fmt(s.get('manager_cores'), '.2f')} cores; main {fmt(s.get('manager_main_thread_cpu_s'), '.1f')} s),"
        f" RSS max {fmt(report.get('manager_rss_mb'), '.0f')} MiB",
        f"  harness CPU              {fmt(s.get('harness_cpu_s'), '.1f')} s"
        f" ({fmt(s.get('harness_cores'), '.2f')} cores): agents {fmt(s.get('agents_cpu_s'), '.1f')} s"
        f" in {report.get('parameters', {}).get('agent_procs', 1)} processes"
        f" ({fmt(report.get('agents_cpu_us_per_task'), ',.0f')} µs per task,"
        f" {fmt(report.get('agents_cpu_us_per_task_beyond_idle'), ',.0f')} beyond their idle"
        f" {fmt(report.get('agents_idle_cores'), '.3f')} cores;"
        f" DB threads {fmt(s.get('agents_db_threads_cpu_s'), '.1f')} s),"
        f" benchmark {fmt(s.get('benchmark_process_cpu_s'), '.1f')} s",
        f"  machine busy             {fmt(s.get('machine_busy_cores'), '.2f')} cores"
        f" (other processes {fmt(s.get('other_processes_cores'), '.2f')})",
    ]
