#!/usr/bin/env python3
"""The result tables of benchmarks/README.md, written from the JSON files in benchmarks/results/.

Each table sits between `<!-- BEGIN name -->` and `<!-- END name -->` in the README; this script rewrites
what is between them from the JSON, so a figure in a table is always the one in its file. Every table
starts with where its figures come from: the file, the date, the commit and whether the tree was clean
(or that the file does not record them: older runs predate that record).

    .venv/bin/python benchmarks/report.py            # rewrite the README's tables
    .venv/bin/python benchmarks/report.py --check    # exit 1 if a table differs from its JSON
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

from report_format import load, ms, num, pct, provenance, result_names, sec, table
from report_schedule import (
    schedule,
    schedule_db_threads,
    schedule_etcd_specs,
    schedule_harness,
    schedule_idle,
    schedule_kernel,
    schedule_profiles,
    schedule_stores,
)

HERE = Path(__file__).resolve().parent
README = HERE / "README.md"
MIB = 1024 * 1024
BLOCK = re.compile(r"(<!-- BEGIN (?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- END (?P=name) -->)", re.S)


# ---- the tables -----------------------------------------------------------------------------------------
def tree_load() -> str:
    d = load("tree_load")
    rows = []
    for name, label in (("nodes", "nodes"), ("machines", "machines"), ("bindings", "bindings")):
        p = d["phases"][name]
        rows.append([
            f"{label} ({num(p['requests'])})", num(p["requests"]), num(p["per_second"]),
            ms(p["latency_ms"]["p50"]), ms(p["latency_ms"]["p99"], 1),
            f"{pct(p['server_cpu_utilisation'])} (main {pct(p['server_main_thread_cpu_utilisation'])})",
            str(p["server_cpu_us_per_request"]), f"{p['server_disk_write_bytes_per_request'] / 1024:.1f} KiB",
            pct(p["client_cpu_utilisation"]), f"{p['machine_cpu_busy_fraction'] * d['machine']['cpu_count']:.2f}",
        ])  # fmt: skip
    overall = d["overall_writes"]
    rows.append(["**all writes**", num(overall["writes"]), f"**{num(overall['per_second'])}**", *[""] * 7])
    for name, label in (
        ("sequential", "resolved reads, 1 connection"),
        ("concurrent", "resolved reads, 16 connections"),
    ):
        p = d["reads"][name]
        rows.append([
            label, num(p["requests"]), num(p["per_second"]), ms(p["latency_ms"]["p50"]),
            ms(p["latency_ms"]["p99"]), pct(p["server_cpu_utilisation"]), str(p["server_cpu_us_per_request"]),
            "0" if not p["server_disk_write_bytes_per_request"] else f"{p['server_disk_write_bytes_per_request'] / 1024:.1f} KiB",
            pct(p["client_cpu_utilisation"]), f"{p['machine_cpu_busy_fraction'] * d['machine']['cpu_count']:.2f}",
        ])  # fmt: skip
    phases = table(
        ["phase", "requests", "per s", "p50", "p99", "manager CPU", "µs CPU / request", "disk written / request",
         "client CPU", "machine busy (cores)"],
        rows,
    )  # fmt: skip
    memory, disk, startup = d["memory"], d["disk"], d["startup"]
    restarts = startup["restart_seconds"]
    after_restart = memory["rss_after_restart_bytes"]
    full = table(
        [f"with the full data set ({num(overall['writes'])} objects, revision {num(d['revision_after_load'])})", ""],
        [
            ["manager RSS, empty", f"{memory['rss_empty_bytes'] / MIB:.0f} MiB"],
            ["manager RSS after the load", f"{memory['rss_after_load_bytes'] / MIB:.0f} MiB"],
            ["manager RSS right after a restart (lowest of the runs)", f"{min(after_restart) / MIB:.0f} MiB"],
            ["data directory while running (`treeherd.db` + WAL)", f"{disk['while_running']['total'] / MIB:.1f} MiB"],
            ["data directory after a clean stop (WAL checkpointed)", f"{disk['after_stop']['total'] / MIB:.1f} MiB"],
            [f"restart: start until `/healthz` answers ({len(restarts)} runs; median)",
             f"**{sec(startup['restart_median_seconds'])}** ({min(restarts):.2f}-{max(restarts):.2f} s)"],
            ["start of an empty manager, for comparison", sec(startup["empty_start_seconds"])],
        ],
    )  # fmt: skip
    return f"{provenance('tree_load', d)}\n\n{phases}\n\n{full}"


def processes() -> str:
    d = load("processes")
    labels = {
        "create_to_running_s": f"create -> all {d['parameters']['replicas']} RUNNING",
        "create_to_answering_s": f"create -> all {d['parameters']['replicas']} answering on their ports",
        "death_to_replacement_running_s": "kill -9 of a task -> replacement RUNNING",
        "death_to_replacement_answering_s": "kill -9 of a task -> replacement answering",
    }
    p = d["parameters"]
    rows = [[label, sec(d["summary"][k]["median"]), sec(d["summary"][k]["min"]), sec(d["summary"][k]["max"])]
            for k, label in labels.items()]  # fmt: skip
    header = [f"{p['replicas']} replicas on {p['agents']} agents, {p['runs']} runs", "median", "min", "max"]
    spreads = sorted(
        {"/".join(str(n) for n in sorted(r["tasks_per_agent"].values(), reverse=True)) for r in d["runs"]}
    )
    spread = f"Tasks per agent in the runs: {', '.join(spreads)}."
    return f"{provenance('processes', d)} {spread}\n\n{table(header, rows)}"


def vs_swarm() -> str:
    d = load("vs_swarm")
    p = d["parameters"]
    labels = {
        "create_to_running_s": f"create -> all {p['replicas']} containers running",
        "kill_to_replacement_s": "kill -9 of a container's process -> replacement running",
        "rm_to_gone_s": "service rm -> every container gone",
    }
    swarm, treeherd = d["summary"]["swarm"], d["summary"]["treeherd"]

    def cell(s: dict[str, float]) -> str:
        return f"{sec(s['median'])} ({sec(s['min'])}-{sec(s['max'])})"

    rows = [[label, cell(swarm[k]), cell(treeherd[k]), f"{d['ratio_treeherd_to_swarm'][k]:.2f}"]
            for k, label in labels.items()]  # fmt: skip
    header = [
        f"{p['runs']} runs each, medians (min-max)",
        "docker swarm mode",
        "treeherd",
        "treeherd / swarm",
    ]
    engine = f"dockerd {d['engine']['version']} (API {d['engine']['api']}), restart delay 0 and stop grace 1 s on both."
    return f"{provenance('vs_swarm', d)} {engine}\n\n{table(header, rows)}"


def haproxy_apply() -> str:
    d = load("haproxy_apply")
    labels = {
        "remove_apply_ms": "remove a server: `apply()` (routing to it stops within)",
        "add_apply_ms": "add a server: `apply()`",
        "add_to_traffic_ms": "add a server: `apply()` start -> it answers a request",
        "reload_apply_ms": "new frontend: `haproxy -c` + reload, until the new worker answers",
        "kill_to_down_traffic_ms": "kill -9 of a backend -> marked down, with traffic",
        "kill_slowest_request_ms": "kill -9 of a backend, with traffic: the slowest request after it",
        "kill_to_down_idle_ms": "kill -9 of a backend -> marked down, idle (active check)",
    }
    s = d["summary_ms"]
    rows = [[label, ms(s[k]["median"]), ms(s[k]["p90"]), ms(s[k]["max"])] for k, label in labels.items()]
    facts = (
        f"haproxy {d['haproxy']}; reload during the runtime changes: "
        f"{'none' if d['no_reload_during_runtime_changes'] else 'yes'}; requests answered by a removed server: "
        f"{d['stray_answers_after_removal']}; failed requests during the reloads: "
        f"{d['failed_requests_during_reloads']} of {num(d['requests_during_reloads'])}."
    )
    return f"{provenance('haproxy_apply', d)} {facts}\n\n{table(['', 'median', 'p90', 'max'], rows)}"


def nginx_render() -> str:
    d = load("nginx_render")
    rows = []
    for r in d["results"]:
        size = r["bytes"]
        shown = f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size / 1e3:.0f} kB"
        validate = r["validate_ms"]
        rows.append([
            num(r["nodes"]), num(r["backends"]), shown, ms(r["routing_ms_median"], 1), ms(r["render_ms_median"], 1),
            f"{validate / 1000:.1f} s" if validate >= 1000 else ms(validate, 0),
        ])  # fmt: skip
    header = ["routed nodes", "backends", "config size", "routing table", "render", "`nginx -t`"]
    medians = f"Medians of {d['repeat']} (`nginx -t` once); goal: render 1,000 nodes in {d['goal_render_ms_at_1000']:.0f} ms."
    return f"{provenance('nginx_render', d)} {medians}\n\n{table(header, rows)}"


def enc() -> str:
    d = load("enc")
    rows = []
    for size in d["sizes"].values():
        e, g = size["treeherd_enc_process_ms"], size["manager_get_enc_ms"]
        rows.append([
            num(size["hosts"]), ms(e["p50"], 1), ms(e["p90"], 1), ms(e["p99"], 1), ms(g["p50"]), ms(g["p99"]),
            f"{size['manager_cpu_us_per_enc_request']} µs", f"{size['load_seconds']:.1f} s",
        ])  # fmt: skip
    header = ["hosts", "`treeherd enc` p50", "p90", "p99", "`GET /api/v1/enc` p50", "p99",
              "manager CPU per request", "loading machines + bindings"]  # fmt: skip
    baselines = "; ".join(
        f"`{command}`{' (' + note if note else ''} p50 {ms(b['p50'], 1)}"
        for name, b in d["baselines_ms"].items()
        for command, _, note in [name.partition(" (")]
    )
    return f"{provenance('enc', d)}\n\n{table(header, rows)}\n\nBaselines: {baselines}."


def discovery() -> str:
    d = load("discovery")
    s = d["summary"]
    rows = [
        [f"registration -> in haproxy ({s['register']['count']})", ms(s["register"]["p50_ms"], 1),
         ms(s["register"]["p90_ms"], 1), ms(s["register"]["max_ms"], 1)],
        [f"deregistration -> out of haproxy ({s['deregister']['count']})", ms(s["deregister"]["p50_ms"], 1),
         ms(s["deregister"]["p90_ms"], 1), ms(s["deregister"]["max_ms"], 1)],
    ]  # fmt: skip
    header = [f"{d['parameters']['changes']} changes", "p50", "p90", "max"]
    return f"{provenance('discovery', d)}\n\n{table(header, rows)}"


def chaos() -> str:
    """Every chaos run kept: the figures of each fault, one table per file (before and after a change)."""
    parts = []
    for name in result_names("chaos*"):
        d = load(name)
        rows = []
        for r in d["results"]:
            recovery = sec(r["recovery_s"]) if r["recovered"] else "**not recovered**"
            twice = ", ".join(str(s) for s in r["slots_seen_twice"]) or "none"
            rows.append([
                r["scenario"], recovery, f"{num(r['edge_failed'])} / {num(r['edge_requests'])}",
                f"{num(r['dependency_failed'])} / {num(r['dependency_requests'])}",
                f"{twice} ({r['seconds_with_a_slot_twice']} s)", ", ".join(map(str, r["slots_without_process_at_end"])) or "none",
            ])  # fmt: skip
        header = ["fault", "to current configuration", "edge failed / sent", "dependency failed / sent",
                  "web slots seen twice", "slots without a process after"]  # fmt: skip
        left = f"Processes left when the run ended: {d['processes_left']}."
        parts.append(f"{provenance(name, d)} {left}\n\n{table(header, rows)}")
    return "\n\n".join(parts)


def endpoint_reads() -> str:
    d = load("endpoint_reads")
    f, p = d["figures"], d["parameters"]

    def us(key: str) -> str:
        value = f[key]["median_s"] * 1e6
        return f"{value / 1000:.1f} ms" if value >= 1000 else f"{value:.1f} µs"

    rows = [
        ["`service_endpoints`, index", us("service_endpoints_index")],
        ["`service_endpoints`, scan (before the index)", us("service_endpoints_scan")],
        ["`dependency_message`", us("dependency_message")],
        [f"a machine's {d['machine_size']} registrations", us("machine_registrations")],
        ["create + delete one endpoint", us("create_and_delete")],
        [f"load {num(p['endpoints'])} endpoints into a state (min of 3)", f"{f['load_all_s'] * 1000:.0f} ms"],
    ]
    header = [f"{num(p['endpoints'])} endpoints, {num(p['services'])} services, one service of {d['service_size']}",
              "median per call"]  # fmt: skip
    return f"{provenance('endpoint_reads', d)}\n\n{table(header, rows)}"


def rolling() -> str:
    d = load("rolling")
    p = d["parameters"]
    rows = [
        [r["executor"], f"{r['parallelism']}" + (" (all at once)" if r["parallelism"] == 0 else ""),
         sec(r["seconds_to_all_new_running"]), f"**{sec(r['seconds_to_update_completed'])}**"]
        for r in d["rolls"]
    ]  # fmt: skip
    rolls = table(
        [f"{num(p['replicas'])} replicas, stop-first, monitor {p['monitor_s']:g} s", "parallelism",
         "all on the new spec, RUNNING", "update completed"], rows, "llrr",
    )  # fmt: skip
    traffic_rows = [
        [r["scenario"], sec(r["seconds"]), f"{num(r['edge_failed'])} / {num(r['edge_requests'])}",
         num(r["edge_retried_by_nginx"]), f"{num(r['dependency_failed'])} / {num(r['dependency_requests'])}"]
        for r in d["traffic"]
    ]  # fmt: skip
    traffic = table(
        [f"{p['traffic_replicas']} replicas with a health check, monitor {p['traffic_monitor_s']:g} s", "took",
         "edge failed / sent", "edge retried by nginx", "dependency failed / sent"], traffic_rows,
    )  # fmt: skip
    head = f"{provenance('rolling', d)} Command: `{d['command'].strip()}`; processes left after the run: {d['processes_left']}."
    return f"{head}\n\n{rolls}\n\n{traffic}"


def tls_overhead() -> str:
    d = load("tls_overhead")
    m, cost = d["medians"], d["tls_cost"]
    labels = {
        "api_requests_keepalive": "API requests, one keep-alive connection",
        "api_requests_new_connection": "API requests, a new connection each",
        "agent_heartbeat_round_trips": "agent-channel round trips (one session)",
    }
    rows = [
        [label, f"{num(m['plain'][key])}/s", f"{num(m['token'][key])}/s", f"{num(m['tls'][key])}/s",
         pct(cost["tls"][key]), pct(1 - m["tls"][key] / m["token"][key])]
        for key, label in labels.items()
    ]  # fmt: skip
    header = ["median of " + str(d["parameters"]["rounds"]) + " rounds", "plain", "token", "TLS + token",
              "TLS + token cost", "TLS alone (vs token)"]  # fmt: skip
    c, c_cost = d["cpu_medians"], d["cpu_cost"]
    cpu_labels = {
        "api_requests_keepalive_manager_us": "manager CPU per API request (keep-alive)",
        "api_requests_keepalive_client_us": "client CPU per API request (keep-alive)",
        "agent_heartbeat_round_trips_manager_us": "manager CPU per agent round trip",
        "agent_heartbeat_round_trips_client_us": "agent CPU per agent round trip",
    }
    cpu_rows = [
        [label, f"{c['plain'][key]:.0f} µs", f"{c['token'][key]:.0f} µs", f"{c['tls'][key]:.0f} µs",
         pct(c_cost["tls"][key])]
        for key, label in cpu_labels.items()
    ]  # fmt: skip
    cpu_header = ["median of " + str(d["parameters"]["rounds"]) + " rounds", "plain", "token", "TLS + token",
                  "TLS + token extra CPU"]  # fmt: skip
    return f"{provenance('tls_overhead', d)}\n\n{table(header, rows)}\n\n{table(cpu_header, cpu_rows)}"


def node_failure() -> str:
    return node_failure_table("node_failure")


def node_failure_5000() -> str:
    return node_failure_table("node_failure-5000")


def node_failure_table(name: str) -> str:
    d = load(name)
    p, load_phase = d["parameters"], d["load"]
    hollow = f" + {num(p['hollow_nodes'])} hollow agents without tasks" if p.get("hollow_nodes") else ""
    rows = []
    for key, label in (
        ("to_down_s", "the node marked down"),
        ("to_replaced_s", "every task of the node running elsewhere"),
    ):
        s = d["summary"][key]
        rows.append([label, sec(s["p50"]), sec(s["max"]), sec(s["min"]), str(s["count"])])
    header = [
        f"after SIGSTOP of an agent (heartbeat {p['heartbeat_period_s']:g} s + {p['heartbeat_epsilon_s']:g} s,"
        f" grace {p['grace_periods']} periods; {p['agents']} agents, {p['replicas']} tasks{hollow})",
        "p50",
        "max",
        "min",
        "runs",
    ]
    head = (
        f"{provenance(name, d)} Command: `{d['command'].strip()}`; runs without a replacement: "
        f"{d['failed_runs']}; processes left: {d['processes_left']}. At 100 % CPU ({load_phase['burners']}"
        f" spinning processes for {load_phase['seconds']:g} s): **{load_phase['false_downs']} nodes marked"
        " down falsely**."
    )
    return f"{head}\n\n{table(header, rows, 'lrrrr')}"


def task_memory() -> str:
    d = load("task_memory")
    p, s = d["parameters"], d["summary"]
    head = (
        f"{provenance('task_memory', d)} Command: `{d['command'].strip()}`; {num(p['tasks'])} running tasks of"
        f" {p['services']} services on {num(p['machines'])} nodes; processes left: {d['processes_left']}."
        f" Goals: RSS at most 4 GiB (**{'met' if s['rss_met'] else 'not met'}**), restart at most 30 s"
        f" (**{'met' if s['restart_met'] else 'not met'}**)."
    )
    rows = [
        ["manager RSS without tasks (settled)", f"{num(d['base']['rss_bytes'] / 2**20)} MiB"],
        [
            "manager RSS with the tasks, after a restart (settled; median)",
            f"{num(s['manager_rss_bytes'] / 2**20)} MiB",
        ],
        ["the manager's bytes per task", num(s["manager_bytes_per_task"])],
        ["the store alone, in a process of its own: RSS per task", num(s["store_bytes_per_task"])],
        [
            "the store alone: Python objects per task, without the history (traced)",
            num(s["store_traced_bytes_per_task"]),
        ],
        [
            f"the retained history ({num(s['history_events'])} events; traced)",
            f"{num(s['history_bytes'] / 2**20)} MiB",
        ],
        ["the store alone: time to open", sec(s["store_open_s"])],
        ["restart: until /healthz answers (median)", sec(s["restart_to_healthy_s"])],
        ["restart: until the manager's CPU settles (median)", sec(s["restart_to_settled_s"])],
        ["the store's files", f"{num(d['data_set']['db_bytes'] / 2**20)} MiB"],
    ]
    runs = [
        [
            str(i + 1),
            sec(r["to_healthy_s"]),
            sec(r["to_settled_s"]),
            f"{num(r['rss_bytes'] / 2**20)} MiB",
            sec(r["cpu_s"]),
            num(r["revisions_written_while_settling"]),
            sec(r["stop_s"]),
        ]
        for i, r in enumerate(d["restarts"])
    ]
    header = ["restart", "to /healthz", "to settled", "RSS", "manager CPU", "revisions written", "stop"]
    return f"{head}\n\n{table(['', 'value'], rows, 'lr')}\n\n{table(header, runs)}"


def failover() -> str:
    d = load("failover")
    p = d["parameters"]
    rows = []
    for key, label in (
        ("to_leader_s", "a new leader (the survivors agree)"),
        ("to_write_s", "the first write accepted"),
        ("to_placement_s", "the first task placed by the new leader"),
    ):
        s = d["summary"][key]
        rows.append([label, sec(s["p50"]), sec(s["max"]), sec(s["min"]), str(s["count"])])
    header = [
        f"after kill -9 of the leader ({p['managers']} managers, {p['etcd_members']}-member etcd, "
        f"lease {p['election_ttl_s']} s)",
        "p50",
        "max",
        "min",
        "runs",
    ]
    head = (
        f"{provenance('failover', d)} Command: `{d['command'].strip()}`; runs without a placement: "
        f"{d['failed_runs']}; processes left: {d['processes_left']}."
    )
    return f"{head}\n\n{table(header, rows, 'lrrrr')}"


def ui_render() -> str:
    d = load("ui_render")
    p = d["parameters"]
    rows = []
    for name, server in d["server"].items():
        browser = d["browser"][name]["ms"]
        rows.append(
            [
                f"{name} (`{server['target']}`)",
                num(server["bytes"]),
                ms(server["ms"]["p50"], 1),
                ms(server["ms"]["max"], 1),
                ms(browser["p50"], 1),
                ms(browser["max"], 1),
            ]
        )
    worst = max(max(s["ms"]["p50"], d["browser"][n]["ms"]["p50"]) for n, s in d["server"].items())
    head = (
        f"{provenance('ui_render', d)} Command: `{d['command'].strip()}`; {num(p['nodes'])} nodes and"
        f" {num(p['machines'])} machines (each bound to a leaf) loaded in {sec(d['load_seconds'], 0)};"
        f" {p['reads']} reads and {p['loads']} browser loads per page. Goal: {ms(p['goal_ms'], 0)} per"
        f" page; the slowest p50 here is **{ms(worst, 1)}**."
    )
    header = ["page", "HTML bytes", "server p50 ms", "server max ms", "browser p50 ms", "browser max ms"]
    return f"{head}\n\n{table(header, rows, 'lrrrrr')}"


SECTIONS: dict[str, Callable[[], str]] = {
    "tree_load": tree_load,
    "schedule": schedule,
    "schedule-db-threads": schedule_db_threads,
    "schedule-harness": schedule_harness,
    "schedule-idle": schedule_idle,
    "schedule-kernel": schedule_kernel,
    "schedule-profiles": schedule_profiles,
    "processes": processes,
    "vs_swarm": vs_swarm,
    "haproxy_apply": haproxy_apply,
    "nginx_render": nginx_render,
    "enc": enc,
    "discovery": discovery,
    "endpoint_reads": endpoint_reads,
    "chaos": chaos,
    "rolling": rolling,
    "tls_overhead": tls_overhead,
    "failover": failover,
    "node_failure": node_failure,
    "node_failure-5000": node_failure_5000,
    "task_memory": task_memory,
    "schedule-stores": schedule_stores,
    "schedule-etcd-specs": schedule_etcd_specs,
    "ui_render": ui_render,
}


# ---- the README -------------------------------------------------------------------------------------------
def blocks(text: str) -> dict[str, str]:
    """The README's generated blocks by name, as they are now."""
    return {m["name"]: m["body"] for m in BLOCK.finditer(text)}


def rewrite(text: str) -> str:
    """The README with every generated block written afresh; an unknown block name is an error."""

    def fresh(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in SECTIONS:
            raise SystemExit(
                f"README.md has a block {name!r} that report.py does not know: one of {sorted(SECTIONS)}"
            )
        return f"{match[1]}{SECTIONS[name]()}\n{match[4]}"

    return BLOCK.sub(fresh, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only say whether the README is up to date")
    args = parser.parse_args(argv)
    text = README.read_text()
    missing = sorted(set(SECTIONS) - set(blocks(text)))
    if missing:
        print(f"README.md lacks the blocks {missing}: add <!-- BEGIN name --> / <!-- END name --> lines")
        return 1
    updated = rewrite(text)
    if updated == text:
        print("README.md's tables match the results")
        return 0
    if args.check:
        stale = [name for name, body in blocks(text).items() if blocks(updated)[name] != body]
        print(f"README.md's tables differ from the results: {stale}; run benchmarks/report.py")
        return 1
    README.write_text(updated)
    print("rewrote README.md's tables from the results")
    return 0


if __name__ == "__main__":
    sys.exit(main())
