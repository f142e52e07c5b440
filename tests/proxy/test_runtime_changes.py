"""The local haproxy against real backends: endpoint changes go through the runtime API with no reload
(same worker, same reload count), and haproxy's own view agrees with the desired state."""

from __future__ import annotations

import asyncio
import collections
import time

import msgspec

from tests.proxy.conftest import one_frontend, server_of
from treeherd.proxy import LocalHaproxy
from treeherd.proxy.runtime import call
from treeherd.render.haproxy import LocalProxy, ProxyFrontend, ProxyServer
from treeherd.testing.backends import ClientLoop, ask, backends
from treeherd.testing.ports import free_port
from treeherd.testing.waiting import eventually


async def _answers(port: int, count: int) -> collections.Counter[str]:
    return collections.Counter([await ask(port) for _ in range(count)])


async def _server_names(proxy: LocalHaproxy) -> set[str]:
    return {row.name for row in await proxy.servers_state()}


async def test_traffic_through_the_local_port_is_spread(local_haproxy: LocalHaproxy) -> None:
    async with backends("b1", "b2") as servers:
        port = free_port()
        await local_haproxy.start(one_frontend(port, servers))
        assert await _answers(port, 40) == {"b1": 20, "b2": 20}


async def test_a_killed_backend_costs_no_request_and_no_reload(local_haproxy: LocalHaproxy) -> None:
    async with backends("b1", "b2") as servers:
        port = free_port()
        await local_haproxy.start(one_frontend(port, servers))
        worker, reloads = local_haproxy.worker_pid, (await local_haproxy.workers()).reloads
        dead = server_of(servers[0]).name
        with ClientLoop(port) as loop:
            await loop.wait_for(20)
            killed = asyncio.Event()
            killed_at = 0.0

            def kill() -> None:
                nonlocal killed_at
                servers[0].kill()
                killed_at = time.monotonic()
                killed.set()

            loop.between_requests(kill)
            await killed.wait()
            answered_before_kill = len(loop.answers)

            async def marked_down() -> bool:
                return not any(s.up for s in await local_haproxy.servers_state() if s.name == dead)

            await eventually(marked_down, "the dead server marked down", timeout_s=5.0, poll_s=0.001)
            down_after_s = time.monotonic() - killed_at
            await loop.wait_for(100)
        await loop.finish()
        print(f"killed backend marked down after {down_after_s * 1000:.0f} ms with traffic")
        assert loop.failures == []
        assert set(loop.answers[answered_before_kill:]) == {"b2"}
        assert down_after_s < 1.0
        assert local_haproxy.worker_pid == worker
        assert (await local_haproxy.workers()).reloads == reloads


async def test_an_idle_killed_backend_is_marked_down_by_its_check(local_haproxy: LocalHaproxy) -> None:
    async with backends("b1", "b2") as servers:
        port = free_port()
        await local_haproxy.start(one_frontend(port, servers))
        dead = server_of(servers[0]).name
        servers[0].kill()

        async def marked_down() -> bool:
            return not any(s.up for s in await local_haproxy.servers_state() if s.name == dead)

        down_after_s = await eventually(marked_down, "the dead server marked down", timeout_s=5.0)
        print(f"idle killed backend marked down by its check after {down_after_s * 1000:.0f} ms")
        # One check interval (1 s) plus the check's own connect; a loaded machine adds a little.
        assert down_after_s < 2.0
        assert await _answers(port, 5) == {"b2": 5}


async def test_scaling_two_to_five_adds_servers_without_reload(local_haproxy: LocalHaproxy) -> None:
    async with backends("b1", "b2", "b3", "b4", "b5") as servers:
        port = free_port()
        await local_haproxy.start(one_frontend(port, servers[:2]))
        worker, reloads = local_haproxy.worker_pid, (await local_haproxy.workers()).reloads
        result = await local_haproxy.apply(one_frontend(port, servers))
        assert not result.reloaded
        assert result.worker_pid == worker
        assert (await local_haproxy.workers()).reloads == reloads
        verbs = [c.command.split(" ")[0:2] for c in result.commands]
        assert verbs.count(["add", "server"]) == 3
        assert verbs.count(["enable", "server"]) == 3
        assert verbs.count(["enable", "health"]) == 3
        assert await _answers(port, 50) == {f"b{i}": 10 for i in range(1, 6)}
        assert await _server_names(local_haproxy) == {server_of(b).name for b in servers}


async def test_removing_servers_deletes_them_without_reload(local_haproxy: LocalHaproxy) -> None:
    async with backends("b1", "b2", "b3", "b4") as servers:
        port = free_port()
        await local_haproxy.start(one_frontend(port, servers))
        worker = local_haproxy.worker_pid
        result = await local_haproxy.apply(one_frontend(port, servers[2:]))
        assert not result.reloaded and result.worker_pid == worker
        assert result.deleted == sorted(f"dep/{server_of(b).name}" for b in servers[:2])
        assert result.draining == []
        assert await _server_names(local_haproxy) == {server_of(b).name for b in servers[2:]}
        assert set(await _answers(port, 20)) == {"b3", "b4"}


async def test_a_removed_server_with_a_connection_drains_then_goes(local_haproxy: LocalHaproxy) -> None:
    async with backends("b1", "b2") as servers:
        port = free_port()
        await local_haproxy.start(one_frontend(port, servers[:1]))
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"ping\n")
        assert await reader.readline() == b"b1\n"
        result = await local_haproxy.apply(one_frontend(port, servers[1:]))
        b1 = f"dep/{server_of(servers[0]).name}"
        assert result.draining == [b1] and result.deleted == []
        assert await _answers(port, 5) == {"b2": 5}  # in maintenance: no new connection
        writer.write(b"ping\n")
        assert await reader.readline() == b"b1\n"  # the open connection still works
        writer.close()

        async def deleted() -> bool:
            return server_of(servers[0]).name not in await _server_names(local_haproxy)

        await eventually(deleted, "the server deleted", timeout_s=5.0)


async def test_drain_timeout_shuts_the_sessions_and_deletes(local_haproxy: LocalHaproxy) -> None:
    local_haproxy.drain_timeout_s = 0.3
    async with backends("b1", "b2") as servers:
        port = free_port()
        await local_haproxy.start(one_frontend(port, servers[:1]))
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"ping\n")
        assert await reader.readline() == b"b1\n"
        await local_haproxy.apply(one_frontend(port, servers[1:]))
        async with asyncio.timeout(5.0):
            assert await reader.read() == b""  # haproxy closed it after the drain timeout
        writer.close()

        async def deleted() -> bool:
            return server_of(servers[0]).name not in await _server_names(local_haproxy)

        await eventually(deleted, "the server deleted", timeout_s=5.0)


async def test_a_draining_server_wanted_again_is_enabled_not_added(local_haproxy: LocalHaproxy) -> None:
    async with backends("b1", "b2") as servers:
        port = free_port()
        await local_haproxy.start(one_frontend(port, servers))
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"ping\n")
        held = (await reader.readline()).decode().strip()
        kept = [b for b in servers if b.name != held]
        await local_haproxy.apply(one_frontend(port, kept))
        result = await local_haproxy.apply(one_frontend(port, servers))
        assert [c.command for c in result.commands] == [
            f"enable server dep/{server_of(servers[0] if held == 'b1' else servers[1]).name}"
        ]
        assert result.draining == []
        assert await _answers(port, 10) == {"b1": 5, "b2": 5}
        writer.close()


async def test_address_and_weight_changes_use_set_commands(local_haproxy: LocalHaproxy) -> None:
    async with backends("b1", "b2", "b3") as servers:
        port = free_port()
        slot = ProxyServer(name="slot-1", address="127.0.0.1", port=servers[0].port)
        other = server_of(servers[2])
        await local_haproxy.start(
            LocalProxy(frontends=[ProxyFrontend(name="dep", port=port, servers=[slot, other])])
        )
        moved = msgspec.structs.replace(slot, port=servers[1].port, weight=3)
        result = await local_haproxy.apply(
            LocalProxy(frontends=[ProxyFrontend(name="dep", port=port, servers=[moved, other])])
        )
        assert [c.command for c in result.commands] == [
            f"set server dep/slot-1 addr 127.0.0.1 port {servers[1].port}",
            "set weight dep/slot-1 3",
        ]
        assert await _answers(port, 40) == {"b2": 30, "b3": 10}
        drained = msgspec.structs.replace(other, weight=0)
        await local_haproxy.apply(
            LocalProxy(frontends=[ProxyFrontend(name="dep", port=port, servers=[moved, drained])])
        )
        assert await _answers(port, 10) == {"b2": 10}


async def test_a_frontend_without_servers_closes_connections_until_one_is_added(
    local_haproxy: LocalHaproxy,
) -> None:
    async with backends("b1") as servers:
        port = free_port()
        await local_haproxy.start(one_frontend(port, []))
        try:
            await ask(port)
            raise AssertionError("a frontend without servers answered")
        except (ConnectionError, OSError):
            pass
        result = await local_haproxy.apply(one_frontend(port, servers))
        assert not result.reloaded
        assert await ask(port) == "b1"


async def test_haproxy_state_that_differs_from_ours_is_repaired_by_a_reload(
    local_haproxy: LocalHaproxy,
) -> None:
    async with backends("b1", "b2") as servers:
        port = free_port()
        await local_haproxy.start(one_frontend(port, servers))
        behind_our_back = f"dep/{server_of(servers[0]).name}"
        await call(local_haproxy.admin_socket, f"disable server {behind_our_back}")
        await call(local_haproxy.admin_socket, f"del server {behind_our_back}")
        heavier = LocalProxy(
            frontends=[
                ProxyFrontend(
                    name="dep", port=port, servers=[server_of(servers[0], 2), server_of(servers[1])]
                )
            ]
        )
        result = await local_haproxy.apply(heavier)
        assert result.reloaded
        assert "No such server" in result.fallback
        weights = {s.name: s.weight for s in await local_haproxy.servers_state()}
        assert weights == {server_of(servers[0]).name: 2, server_of(servers[1]).name: 1}
        assert await _answers(port, 30) == {"b1": 20, "b2": 10}
