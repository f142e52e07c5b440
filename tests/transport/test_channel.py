"""The agent channel over real sockets: a Litestar app served by uvicorn on loopback, dialled with
`connect_agent`; messages both ways, closes from either end, malformed frames, a manager that stops
reading, unreachable managers, and the real agent route in front of a dispatcher."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar, WebSocket, websocket

from treeherd.api.routes.agent import agent_router
from treeherd.api.server import ApiServer, bind_socket
from treeherd.manager.cluster_ca import ClusterAuthority
from treeherd.manager.dispatcher import Dispatcher
from treeherd.manager.leadership import FollowerDoor
from treeherd.model.objects import Machine
from treeherd.model.wire import (
    Assignments,
    Heartbeat,
    HeartbeatAck,
    Register,
    SessionRefused,
    SessionStarted,
    StatusReport,
)
from treeherd.runtime import utc_now
from treeherd.store.memory import MemoryStore
from treeherd.transport.channel import (
    AGENT_PATH,
    CLOSE_TIMEOUT_S,
    AgentChannel,
    ChannelClosed,
    ManagerUnreachable,
    ServerChannel,
    agent_url,
    connect_agent,
)

WAIT = 5.0


class Peer:
    """What the test route saw: every message, and how its channel ended."""

    def __init__(self) -> None:
        self.received: list[object] = []
        self.ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()


@contextlib.asynccontextmanager
async def served(app: Litestar, tls: tuple[Path, Path, Path] | None = None) -> AsyncIterator[str]:
    sock = bind_socket("127.0.0.1", 0)
    server = ApiServer(app, sock, tls=tls)
    task = asyncio.create_task(server.run())
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.stop()
        await asyncio.wait_for(task, WAIT)
        sock.close()


async def until_closed(channel: AgentChannel) -> None:
    """Read (and drop) messages until the channel closes."""
    while True:
        await asyncio.wait_for(channel.receive(), WAIT)


def echo_app(peer: Peer) -> Litestar:
    """Answers Register with SessionStarted and Heartbeat with HeartbeatAck; a StatusReport with
    report_id 99 makes it close the channel."""

    @websocket(AGENT_PATH)
    async def handler(socket: WebSocket[Any, Any, Any]) -> None:
        channel = ServerChannel(socket)
        await channel.accept()
        try:
            while True:
                message = await channel.receive()
                peer.received.append(message)
                if isinstance(message, Register):
                    await channel.send(
                        SessionStarted(session_id="s1", machine_id="m1", heartbeat_period_s=5.0)
                    )
                elif isinstance(message, Heartbeat):
                    await channel.send(HeartbeatAck(period_s=5.0))
                elif isinstance(message, StatusReport) and message.report_id == 99:
                    await channel.close()
                    peer.ended.set_result("server closed")
                    return
        except ChannelClosed as error:
            peer.ended.set_result(str(error))
        finally:
            await channel.close()

    return Litestar(route_handlers=[handler], logging_config=None)


@pytest.fixture
async def echo() -> AsyncIterator[tuple[str, Peer]]:
    peer = Peer()
    async with served(echo_app(peer)) as url:
        yield url, peer


async def test_messages_flow_both_ways(echo: tuple[str, Peer]) -> None:
    url, peer = echo
    channel = await connect_agent(url)
    try:
        await channel.send(Register(hostname="web-1", ips=["127.0.0.1"], cpus=2.0))
        started = await asyncio.wait_for(channel.receive(), WAIT)
        assert started == SessionStarted(session_id="s1", machine_id="m1", heartbeat_period_s=5.0)
        for _ in range(3):
            await channel.send(Heartbeat(session_id="s1"))
            assert await asyncio.wait_for(channel.receive(), WAIT) == HeartbeatAck(period_s=5.0)
        assert peer.received[0] == Register(hostname="web-1", ips=["127.0.0.1"], cpus=2.0)
        assert peer.received[1:] == [Heartbeat(session_id="s1")] * 3
    finally:
        await channel.close()
    assert "closed" in await asyncio.wait_for(peer.ended, WAIT)  # the server saw the agent leave


async def test_server_close_raises_channel_closed_on_the_agent(echo: tuple[str, Peer]) -> None:
    url, peer = echo
    channel = await connect_agent(url)
    await channel.send(StatusReport(session_id="s1", updates=[], report_id=99))
    with pytest.raises(ChannelClosed):
        await asyncio.wait_for(channel.receive(), WAIT)
    assert await asyncio.wait_for(peer.ended, WAIT) == "server closed"
    with pytest.raises(ChannelClosed):
        await channel.send(Heartbeat(session_id="s1"))
    await channel.close()


async def test_a_malformed_frame_closes_the_channel(echo: tuple[str, Peer]) -> None:
    url, peer = echo
    channel = await connect_agent(url)
    await channel._connection.send(b"\xc1 not msgpack")
    reason = await asyncio.wait_for(peer.ended, WAIT)
    assert "malformed" in reason
    with pytest.raises(ChannelClosed):
        await asyncio.wait_for(channel.receive(), WAIT)
    await channel.close()


@pytest.mark.parametrize("over_tls", [False, True], ids=["plain", "tls"])
async def test_a_send_the_manager_does_not_take_ends_the_channel_in_time(
    over_tls: bool, tmp_path: Path
) -> None:
    """A manager that stops reading: the agent's sends fill its buffers, and the first send that has to
    wait for it longer than the send timeout closes the channel with ChannelClosed (TLS pauses a
    writer at its high-water mark, a plain transport above it: both must take the timed path)."""
    accepted, done = asyncio.Event(), asyncio.Event()
    tls, client = None, None
    if over_tls:
        authority = ClusterAuthority.open(tmp_path / "data", utc_now())
        cert, key = authority.server_files(("127.0.0.1",), utc_now())
        tls = (cert, key, tmp_path / "data" / "ca.crt")
        client = ssl.create_default_context(cafile=str(tmp_path / "data" / "ca.crt"))

    @websocket(AGENT_PATH)
    async def deaf(socket: WebSocket[Any, Any, Any]) -> None:
        await socket.accept()
        accepted.set()
        with contextlib.suppress(TimeoutError):  # never reads, until the test is done
            await asyncio.wait_for(done.wait(), 4 * WAIT)

    async with served(Litestar(route_handlers=[deaf], logging_config=None), tls) as url:
        try:
            await refused_in_time(url, accepted, client)
        finally:
            done.set()


async def refused_in_time(url: str, accepted: asyncio.Event, tls: ssl.SSLContext | None) -> None:
    channel = await connect_agent(url, tls=tls)
    try:
        channel._send_timeout = 0.5
        await asyncio.wait_for(accepted.wait(), WAIT)
        large = Heartbeat(session_id="x" * 256 * 1024)

        async def send_until_refused() -> tuple[ChannelClosed, float]:
            for _ in range(1000):  # at most 256 MB: the buffers on both ends fill long before
                started = asyncio.get_running_loop().time()
                try:
                    await asyncio.wait_for(channel.send(large), 3 * WAIT)
                except ChannelClosed as error:
                    return error, asyncio.get_running_loop().time() - started
            raise AssertionError("a manager that reads nothing took 256 MB")

        error, waited = await send_until_refused()
        assert "did not take a message within 0.5 s" in str(error)
        # The send that waited: its timeout, then the connection dropped (a peer that reads nothing would
        # not read a close frame either).
        assert waited < CLOSE_TIMEOUT_S
        assert channel.closed
    finally:
        await channel.close()


async def test_unreachable_manager_gives_a_clear_error() -> None:
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there any more
    with pytest.raises(ManagerUnreachable, match="cannot reach the treeherd manager"):
        await connect_agent(f"http://127.0.0.1:{port}", open_timeout_s=WAIT)


async def test_a_server_without_the_agent_route_is_refused_clearly() -> None:
    async with served(Litestar(route_handlers=[], logging_config=None)) as url:
        with pytest.raises(ManagerUnreachable, match=r"refused the agent channel \(HTTP 40[34]"):
            await connect_agent(url, open_timeout_s=WAIT)


def test_agent_url_from_manager_urls() -> None:
    assert agent_url("http://127.0.0.1:7400") == "ws://127.0.0.1:7400/api/v1/agent"
    assert agent_url("https://manager.example.com/") == "wss://manager.example.com/api/v1/agent"
    assert agent_url("127.0.0.1:7400") == "ws://127.0.0.1:7400/api/v1/agent"
    assert agent_url("http://lb.example.com/treeherd") == "ws://lb.example.com/treeherd/api/v1/agent"
    assert agent_url("ws://h:1/api/v1/agent") == "ws://h:1/api/v1/agent"
    with pytest.raises(ManagerUnreachable, match="invalid manager URL"):
        agent_url("ftp://h")


async def test_the_agent_route_serves_a_dispatcher_session() -> None:
    store = MemoryStore()
    await store.open()
    dispatcher = Dispatcher(store, managers=["http://manager:7400"])
    running = asyncio.create_task(dispatcher.run())
    try:
        async with served(Litestar(route_handlers=[agent_router(dispatcher)], logging_config=None)) as url:
            channel = await connect_agent(url)
            try:
                await channel.send(Register(hostname="web-1", cpus=2.0))
                started = await asyncio.wait_for(channel.receive(), WAIT)
                assert isinstance(started, SessionStarted) and started.managers == ["http://manager:7400"]
                full = await asyncio.wait_for(channel.receive(), WAIT)
                assert isinstance(full, Assignments) and full.full and full.updated == []
                for _ in range(2):  # the dispatcher answers every second heartbeat
                    await channel.send(Heartbeat(session_id=started.session_id))
                ack = await asyncio.wait_for(channel.receive(), WAIT)
                assert isinstance(ack, HeartbeatAck) and 5.0 <= ack.period_s <= 5.5
                machine = store.view().get(Machine, started.machine_id)
                assert machine is not None and machine.agent is not None
                assert machine.agent.state == "ready" and machine.agent.address == "127.0.0.1"

                # A second connection for the same host replaces this one.
                second = await connect_agent(url)
                await second.send(Register(hostname="web-1"))
                assert isinstance(await asyncio.wait_for(second.receive(), WAIT), SessionStarted)
                with pytest.raises(ChannelClosed):
                    await until_closed(channel)
                await second.close()
            finally:
                await channel.close()
            # A dispatcher that stopped refuses sessions.
            dispatcher.stop()
            await asyncio.wait_for(running, WAIT)
            late = await connect_agent(url)
            await late.send(Register(hostname="web-2"))
            refused = await asyncio.wait_for(late.receive(), WAIT)
            assert isinstance(refused, SessionRefused) and refused.code == "unavailable"
            await late.close()
    finally:
        dispatcher.stop()
        await asyncio.wait_for(running, WAIT)
        await store.close()


async def test_a_follower_refuses_an_agent_with_the_leaders_url() -> None:
    door = FollowerDoor("http://leader:7400")
    async with served(Litestar(route_handlers=[agent_router(lambda: door)], logging_config=None)) as url:
        channel = await connect_agent(url)
        try:
            await channel.send(Register(hostname="web-1", cpus=2.0))
            refused = await asyncio.wait_for(channel.receive(), WAIT)
            assert isinstance(refused, SessionRefused)
            assert (refused.code, refused.leader) == ("not_leader", "http://leader:7400")
            assert "the leader is at http://leader:7400" in refused.detail
        finally:
            await channel.close()
