"""The pure planner: which runtime commands (or a reload) bring haproxy's servers to a desired state."""

from __future__ import annotations

from treeherd.proxy.plan import plan_changes, servers_of
from treeherd.render.haproxy import HaproxyOptions, LocalProxy, ProxyFrontend, ProxyServer

OPTIONS = HaproxyOptions(admin_socket="/run/haproxy.sock")
A = ProxyServer(name="a", address="10.0.0.1", port=80)
B = ProxyServer(name="b", address="10.0.0.2", port=80)


def _state(*servers: ProxyServer, name: str = "svc", port: int = 10010) -> LocalProxy:
    return LocalProxy(frontends=[ProxyFrontend(name=name, port=port, servers=list(servers))])


def test_same_state_needs_nothing() -> None:
    plan = plan_changes({"svc": 10010}, servers_of(_state(A, B)), _state(B, A), OPTIONS)
    assert (plan.reload, plan.commands, plan.removals) == (False, [], [])


def test_a_new_server_is_added_health_checked_and_enabled() -> None:
    plan = plan_changes({"svc": 10010}, servers_of(_state(A)), _state(A, B), OPTIONS)
    assert plan.commands == [
        "add server svc/b 10.0.0.2:80 weight 1 check inter 1000ms fall 1 rise 1 observe layer4 error-limit 1"
        " on-error mark-down",
        "enable health svc/b",
        "enable server svc/b",
    ]


def test_without_checks_there_is_no_enable_health() -> None:
    options = HaproxyOptions(admin_socket="/run/haproxy.sock", checks=False)
    plan = plan_changes({"svc": 10010}, {}, _state(A), options)
    assert plan.commands == ["add server svc/a 10.0.0.1:80 weight 1", "enable server svc/a"]


def test_a_removed_server_goes_to_maintenance_and_is_left_to_delete() -> None:
    plan = plan_changes({"svc": 10010}, servers_of(_state(A, B)), _state(B), OPTIONS)
    assert plan.commands == ["disable server svc/a"]
    assert plan.removals == ["svc/a"]


def test_adds_come_before_changes_and_removals() -> None:
    moved = ProxyServer(name="b", address="10.0.0.9", port=81, weight=5)
    c = ProxyServer(name="c", address="10.0.0.3", port=80)
    plan = plan_changes({"svc": 10010}, servers_of(_state(A, B)), _state(moved, c), OPTIONS)
    assert [command.split(" ")[0] + " " + command.split(" ")[2] for command in plan.commands] == [
        "add svc/c",
        "enable svc/c",
        "enable svc/c",
        "set svc/b",
        "set svc/b",
        "disable svc/a",
    ]
    assert "set server svc/b addr 10.0.0.9 port 81" in plan.commands
    assert "set weight svc/b 5" in plan.commands


def test_a_server_in_maintenance_wanted_again_is_enabled() -> None:
    draining = {"svc": {"a": (A, True), "b": (B, False)}}
    plan = plan_changes({"svc": 10010}, draining, _state(A, B), OPTIONS)
    assert plan.commands == ["enable server svc/a"]
    assert plan_changes({"svc": 10010}, draining, _state(B), OPTIONS).commands == []


def test_a_changed_frontend_set_is_a_reload() -> None:
    assert plan_changes({"svc": 10010}, {}, _state(A, port=10011), OPTIONS).reload
    assert plan_changes({"svc": 10010}, {}, _state(A, name="other"), OPTIONS).reload
    assert plan_changes({"svc": 10010}, {}, LocalProxy(), OPTIONS).reload


def test_names_are_mapped_to_haproxy_identifiers() -> None:
    odd = ProxyServer(name="task/1", address="10.0.0.1", port=80)
    plan = plan_changes({"team_web": 10010}, {"team_web": {}}, _state(odd, name="team/web"), OPTIONS)
    assert plan.commands[0].startswith("add server team_web/task_1 10.0.0.1:80 ")
