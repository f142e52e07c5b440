"""`treeherd service|node|cluster|debug` against a real manager with a real agent (hollow executor)."""

from __future__ import annotations

import json
import os
import pty
import secrets
import select
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.conftest import Cli
from treeherd.testing.processes import AgentProcess, ManagerProcess, treeherd_command

WAIT_S = 20.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cli, str]]:
    tmp = tmp_path_factory.mktemp("svc")
    with ManagerProcess(tmp / "manager") as manager:
        agent = AgentProcess(manager.url, tmp / "agent", "worker-1", labels=("disk=ssd",)).start()
        cli = Cli(manager.url)
        try:
            deadline = time.monotonic() + WAIT_S
            while "ready" not in cli("node", "ls").stdout and time.monotonic() < deadline:
                time.sleep(0.1)
            yield cli, "worker-1"
        finally:
            agent.kill()


def wait_json(cli: Cli, args: tuple[str, ...], check, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + WAIT_S
    value = None
    while time.monotonic() < deadline:
        value = json.loads(cli(*args, "--format", "json").stdout)
        if check(value):
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}: {value}")


@pytest.fixture
def names(cluster: tuple[Cli, str]) -> tuple[Cli, str, str]:
    cli, _ = cluster
    root = "s" + secrets.token_hex(3)
    cli("tree", "add", root)
    return cli, root, f"svc-{root}"


def test_create_ps_scale_update_rm(names: tuple[Cli, str, str]) -> None:
    cli, root, name = names
    out = cli(
        "service",
        "create",
        name,
        "--node",
        root,
        "--replicas",
        "3",
        "--port",
        "http",
        "--env",
        "MODE=test",
        "--restart-condition",
        "on-failure",
        "--restart-delay",
        "1s",
        "--",
        "serve",
        "--flag",
    ).stdout
    assert out.startswith(f"created service {name}")
    rows = wait_json(
        cli, ("service", "ps", name), lambda r: [t["state"] for t in r] == ["running"] * 3, "3 running"
    )
    assert sorted(t["slot"] for t in rows) == [1, 2, 3]
    assert all(set(t["ports"]) == {"http"} for t in rows)
    table = cli("service", "ls").stdout
    assert f"{name}" in table and "3/3" in table and root in table
    assert "ID" in cli("service", "ps", name).stdout.splitlines()[0]

    cli("service", "scale", f"{name}=1")
    wait_json(
        cli,
        ("service", "ps", name, "--current"),
        lambda r: len(r) == 1 and r[0]["state"] == "running",
        "scaled to 1",
    )
    assert "tasks will be replaced" in cli("service", "update", name, "--env", "MODE=prod").stdout
    wait_json(
        cli,
        ("service", "ps", name, "--current"),
        lambda r: [(t["spec_version"], t["state"]) for t in r] == [(2, "running")],
        "updated",
    )
    inspected = json.loads(cli("service", "inspect", name).stdout)
    assert inspected["service"]["task"]["env"] == {"MODE": "prod"}
    assert inspected["service"]["task"]["command"] == ["serve", "--flag"]

    task_id = json.loads(cli("service", "ps", name, "--current", "--format", "json").stdout)[0]["id"]
    story = cli("debug", "story", task_id).stdout
    assert "created" in story and "assigned" in story and "running" in story

    assert f"removing {name}" in cli("service", "rm", name).stdout
    wait_json(cli, ("service", "ls"), lambda r: name not in [s["service"]["name"] for s in r], "removed")


def test_unplaceable_service_says_why(names: tuple[Cli, str, str]) -> None:
    cli, root, name = names
    cli("service", "create", name, "--node", root, "--constraint", "node.labels.disk==nvme", "--", "x")
    wait_json(
        cli,
        ("service", "ps", name),
        lambda r: r and "node.labels.disk==nvme" in r[0]["placement_error"],
        "an explanation",
    )
    assert "cannot be placed: no node satisfies node.labels.disk==nvme" in cli("service", "ps", name).stdout
    cli("service", "rm", name)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--node", "no.such.node", "--", "x"), "no tree node"),
        (("--node", "ROOT", "--conflicts", "ghost", "--", "x"), "unknown service 'ghost'"),
        (("--node", "ROOT", "--constraint", "node.labels.disk=ssd", "--", "x"), "invalid constraint"),
        (("--node", "ROOT", "--replicas", "-1", "--", "x"), "replicas must be between"),
        (
            ("--node", "ROOT", "--reserve-memory", "2G", "--limit-memory", "1G", "--", "x"),
            "below the reservation",
        ),
        (("--node", "ROOT", "--restart-delay", "soon", "--", "x"), "not a duration"),
        (("--node", "ROOT", "--mode", "global", "--replicas", "2", "--", "x"), "does not apply to a global"),
    ],
)
def test_bad_service_input_writes_nothing(
    names: tuple[Cli, str, str], args: tuple[str, ...], message: str
) -> None:
    cli, root, name = names
    args = tuple(root if a == "ROOT" else a for a in args)
    result = cli("service", "create", name, *args, check=False)
    assert result.returncode in (1, 2)
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    services = json.loads(cli("service", "ls", "--format", "json").stdout)
    assert name not in [s["service"]["name"] for s in services]


def test_node_commands(cluster: tuple[Cli, str]) -> None:
    cli, host = cluster
    nodes = json.loads(cli("node", "ls", "--format", "json").stdout)
    assert [n["hostname"] for n in nodes] == [host]
    assert nodes[0]["agent"]["state"] == "ready" and nodes[0]["labels"] == {"disk": "ssd"}
    cli("node", "update", host, "--availability", "pause", "--label-add", "zone=a")
    shown = json.loads(cli("node", "inspect", host).stdout)
    assert shown["availability"] == "pause" and shown["labels"] == {"disk": "ssd", "zone": "a"}
    cli("node", "update", host, "--availability", "active", "--label-rm", "zone")
    assert json.loads(cli("node", "inspect", host).stdout)["availability"] == "active"


def test_cluster_settings(cluster: tuple[Cli, str]) -> None:
    cli, _ = cluster
    cli("cluster", "set", "--task-history", "7")
    assert json.loads(cli("cluster", "show", "--format", "json").stdout)["task_history"] == 7
    bad = cli("cluster", "set", "--heartbeat-period", "0s", check=False)
    assert bad.returncode == 1 and "heartbeat_period_s must be between" in bad.stderr


def test_create_scale_and_update_follow_the_convergence(names: tuple[Cli, str, str]) -> None:
    cli, root, name = names
    created = cli("service", "create", name, "--node", root, "--replicas", "3", "--follow", "--", "x")
    assert f"{name}.1" in created.stdout and f"{name}: converged, 3 tasks running spec 1" in created.stdout
    scaled = cli("service", "scale", f"{name}=1", "--follow")
    assert f"{name}: converged, 1 tasks running spec 1" in scaled.stdout
    updated = cli("service", "update", name, "--env", "A=1", "--update-monitor", "0s", "--follow")
    # A slot's line shows its task of the new spec; "spec 1 -> 2" only if a poll caught the old task
    # still running, which a stop-first update of one idle task may replace before the first poll.
    assert f"{name}.1" in updated.stdout and "spec 2" in updated.stdout
    assert f"{name}: converged, 1 tasks running spec 2 (update completed)" in updated.stdout
    # Without a terminal (or with --detach) the command returns at once.
    detached = cli("service", "update", name, "--force")
    assert "converged" not in detached.stdout


def at_a_terminal(cli: Cli, *args: str) -> tuple[int, str, str]:
    """Run the CLI with its stdout on a pseudo-terminal, as a person at a shell would: (exit code,
    what the terminal received, stderr)."""
    controller, terminal = pty.openpty()
    env = {**os.environ, "TREEHERD_MANAGER": cli.url, "COLUMNS": "120", "TERM": "xterm"}
    process = subprocess.Popen(
        [*treeherd_command(), *args], stdout=terminal, stderr=subprocess.PIPE, env=env, text=False
    )
    os.close(terminal)
    received = bytearray()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the other end closed: the command is done
                break
            if not chunk:
                break
            received += chunk
        elif process.poll() is not None:
            break
    os.close(controller)
    code = process.wait(10)
    assert process.stderr is not None
    with process.stderr:
        err = process.stderr.read().decode()
    return code, received.decode(errors="replace"), err


def test_past_twenty_tasks_a_terminal_shows_a_progress_bar(names: tuple[Cli, str, str]) -> None:
    cli, root, name = names
    code, screen, _ = at_a_terminal(
        cli, "service", "create", name, "--node", root, "--replicas", "30", "--", "x"
    )
    assert code == 0, screen
    assert "━" in screen and "30/30" in screen and "\x1b[" in screen  # a bar, drawn in place
    assert f"{name}.1 " not in screen  # no line per slot
    assert f"{name}: converged, 30 tasks running spec 1" in screen
    # An update that fails pauses: the bar stops, the reason goes to stderr and the exit code says so.
    code, screen, err = at_a_terminal(
        cli, "service", "update", name, "--env", "TREEHERD_HOLLOW_FAIL=start",
        "--update-parallelism", "10", "--update-monitor", "0s",
    )  # fmt: skip
    assert code == 1 and "update paused: task" in err, (screen, err)
    assert "━" in screen and f"{name} spec 2" in screen
    # Without a terminal, --follow prints plain lines of counts (here of a rollback to the old spec).
    piped = cli("service", "rollback", name, "--follow")
    assert "30/30 tasks running spec 3" in piped.stdout and "\x1b[" not in piped.stdout


def test_a_canary_from_the_command_line(names: tuple[Cli, str, str]) -> None:
    """`update --canary` starts one and returns once it serves; ps and inspect show it; abort puts the
    old spec back; a second canary is promoted; bad canaries and promote/abort without one are refused
    with nothing changed."""
    cli, root, name = names
    cli(
        "service",
        "create",
        name,
        "--node",
        root,
        "--replicas",
        "4",
        "--update-monitor",
        "0s",
        "--follow",
        "--",
        "x",
    )
    started = cli(
        "service", "update", name, "--env", "V=2", "--canary", "25%", "--canary-window", "2m", "--follow"
    )
    assert "canary of 1 of 4 tasks, about 25% of the requests; judged over 120s" in started.stdout
    assert f"treeherd service promote {name}" in started.stdout
    assert f"{name}: canary on 1 of 4 slots (spec 2), judged over 120s since" in started.stdout
    ps = cli("service", "ps", name, "--current").stdout
    assert "UPDATE: canary (since" in ps and "CANARY: 1 task(s) in slots 1" in ps, ps
    shown = json.loads(cli("service", "inspect", name).stdout)["service"]["update_status"]
    assert shown["state"] == "canary" and shown["canary"]["policy"]["window_s"] == 120
    tasks = json.loads(cli("service", "ps", name, "--current", "--format", "json").stdout)
    assert sorted(t["spec_version"] for t in tasks) == [1, 1, 1, 2]

    aborted = cli("service", "abort", name, "--follow")
    assert f"aborting the canary of {name}" in aborted.stdout
    assert "canary abort completed" in aborted.stdout, aborted.stdout
    tasks = json.loads(cli("service", "ps", name, "--current", "--format", "json").stdout)
    assert sorted(t["spec_version"] for t in tasks) == [1, 1, 1, 3]  # slot 1 back on the old spec

    cli("service", "update", name, "--env", "V=4", "--canary", "2", "--follow")
    promoted = cli("service", "promote", name, "--follow")
    assert f"{name}: converged, 4 tasks running spec 4" in promoted.stdout, promoted.stdout

    before = cli("service", "inspect", name).stdout
    for args, message in [
        (("update", name, "--env", "V=5", "--canary", "4"), "leaves no task"),
        (("update", name, "--env", "V=5", "--canary", "1", "--canary-margin", "-1"), "canary.margin"),
        (("update", name, "--env", "V=5", "--canary", "some"), "is not a number of tasks or a percentage"),
        (("update", name, "--env", "V=5", "--canary-window", "1m"), "needs --canary N"),
        (("update", name, "--canary", "1"), "needs a change of the task spec"),
        (("promote", name), "has no canary to act on (its update is completed)"),
        (("abort", name), "has no canary to act on"),
    ]:
        result = cli("service", *args, check=False)
        assert result.returncode in (1, 2) and message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
    assert cli("service", "inspect", name).stdout == before
    cli("service", "rm", name)
