"""The local haproxy when its frontends change: one checked, hitless reload; a configuration that
`haproxy -c` rejects, or that the master cannot load, never replaces the running one."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.proxy.conftest import frontend, one_frontend, server_of
from treeherd.proxy import HaproxyConfigRejected, HaproxyFailed, LocalHaproxy
from treeherd.render.haproxy import (
    HaproxyOptions,
    LocalProxy,
    LocalProxyInvalid,
    ProxyFrontend,
    render_haproxy,
)
from treeherd.testing.backends import ClientLoop, ask, backends
from treeherd.testing.ports import free_port


async def test_a_new_frontend_is_one_hitless_reload(local_haproxy: LocalHaproxy) -> None:
    async with backends("b1", "b2", "b3", "c1") as servers:
        port, other_port = free_port(), free_port()
        await local_haproxy.start(one_frontend(port, servers[:2]))
        await local_haproxy.apply(one_frontend(port, servers[:3]))  # b3 exists only at run time so far
        before = await local_haproxy.workers()
        with ClientLoop(port) as loop:
            await loop.wait_for(20)
            result = await local_haproxy.apply(
                LocalProxy(
                    frontends=[frontend("dep", port, servers[:3]), frontend("other", other_port, servers[3:])]
                )
            )
            await loop.wait_for(100)
        await loop.finish()
        after = await local_haproxy.workers()
        print(f"reload: check {result.check_ms:.0f} ms, reload {result.reload_ms:.0f} ms")
        assert result.reloaded and result.commands == [] and result.fallback == ""
        assert result.worker_pid != before.current[0]
        assert after.reloads == before.reloads + 1 and after.failed_reloads == 0
        assert after.current == [result.worker_pid]
        assert loop.failures == []
        assert {"b1", "b2", "b3"} <= set(loop.answers[-30:])  # the runtime-added server survived
        assert await ask(other_port) == "c1"
        assert f"server {server_of(servers[2]).name} " in local_haproxy.config.read_text()


async def test_removing_a_frontend_reloads_and_frees_its_port(local_haproxy: LocalHaproxy) -> None:
    async with backends("b1", "c1") as servers:
        port, other_port = free_port(), free_port()
        await local_haproxy.start(
            LocalProxy(
                frontends=[frontend("dep", port, servers[:1]), frontend("other", other_port, servers[1:])]
            )
        )
        result = await local_haproxy.apply(one_frontend(port, servers[:1]))
        assert result.reloaded
        with pytest.raises(OSError):
            await ask(other_port)
        assert await ask(port) == "b1"


def _broken_when_named_broken(state: LocalProxy, options: HaproxyOptions) -> str:
    """The real renderer, plus a line haproxy refuses whenever a frontend is named `broken`."""
    text = render_haproxy(state, options)
    if any(f.name == "broken" for f in state.frontends):
        text += "    no-such-haproxy-keyword 1\n"
    return text


async def test_a_configuration_haproxy_rejects_never_replaces_the_running_one(tmp_path: Path) -> None:
    proxy = LocalHaproxy(tmp_path / "haproxy", renderer=_broken_when_named_broken)
    try:
        async with backends("b1") as servers:
            port = free_port()
            await proxy.start(one_frontend(port, servers))
            config, worker, reloads = (
                proxy.config.read_bytes(),
                proxy.worker_pid,
                (await proxy.workers()).reloads,
            )
            broken = LocalProxy(
                frontends=[frontend("dep", port, servers), ProxyFrontend(name="broken", port=free_port())]
            )
            with pytest.raises(HaproxyConfigRejected) as caught:
                await proxy.apply(broken)
            assert "no-such-haproxy-keyword" in caught.value.detail
            assert proxy.config.read_bytes() == config
            assert proxy.worker_pid == worker and (await proxy.workers()).reloads == reloads
            assert await ask(port) == "b1"
            fine_port = free_port()
            fixed = LocalProxy(
                frontends=[frontend("dep", port, servers), ProxyFrontend(name="fine", port=fine_port)]
            )
            assert (await proxy.apply(fixed)).reloaded
    finally:
        await proxy.stop()


async def test_a_port_taken_by_another_process_fails_the_reload_and_keeps_serving(
    local_haproxy: LocalHaproxy,
) -> None:
    async with backends("b1", "b2") as servers:
        port = free_port()
        await local_haproxy.start(one_frontend(port, servers[:1]))
        config, worker = local_haproxy.config.read_bytes(), local_haproxy.worker_pid
        with socket.socket() as squatter:
            squatter.bind(("127.0.0.1", 0))
            squatter.listen()
            taken = squatter.getsockname()[1]
            clash = LocalProxy(frontends=[frontend("dep", port, servers[:1]), frontend("other", taken, [])])
            with pytest.raises(HaproxyFailed) as caught:
                await local_haproxy.apply(clash)
        assert "cannot bind" in caught.value.detail
        assert local_haproxy.config.read_bytes() == config
        assert (await local_haproxy.workers()).current == [worker]
        assert await ask(port) == "b1"
        # Still at the old state: a runtime change works, and so does the next reload.
        assert not (await local_haproxy.apply(one_frontend(port, servers))).reloaded
        free = LocalProxy(frontends=[frontend("dep", port, servers), frontend("other", free_port(), [])])
        assert (await local_haproxy.apply(free)).reloaded


async def test_bad_input_is_refused_before_haproxy_sees_it(local_haproxy: LocalHaproxy) -> None:
    await local_haproxy.start()
    with pytest.raises(LocalProxyInvalid, match="local port 8080 is claimed by more than one frontend"):
        await local_haproxy.apply(
            LocalProxy(frontends=[ProxyFrontend(name="a", port=8080), ProxyFrontend(name="b", port=8080)])
        )
    assert (await local_haproxy.workers()).reloads == 0


async def test_a_missing_haproxy_is_a_clear_error(tmp_path: Path) -> None:
    proxy = LocalHaproxy(tmp_path / "haproxy", binary=str(tmp_path / "no-haproxy-here"))
    with pytest.raises(HaproxyFailed, match="is not installed"):
        await proxy.start()


async def test_apply_before_start_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(HaproxyFailed, match="not running"):
        await LocalHaproxy(tmp_path / "haproxy").apply(LocalProxy())


async def test_stop_ends_the_master_and_its_worker(tmp_path: Path) -> None:
    proxy = LocalHaproxy(tmp_path / "haproxy")
    await proxy.start(LocalProxy(frontends=[ProxyFrontend(name="a", port=free_port())]))
    master, worker = proxy.master_pid, proxy.worker_pid
    assert master is not None
    await proxy.stop()
    assert not _alive(master) and not _alive(worker)


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting for its parent does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False
