"""The manager process: opens the store, serves the API, and shuts down cleanly on SIGTERM/SIGINT.

One data directory belongs to one manager at a time (a lock file says which pid holds it). Once the API
listens, its URL is written to `DATA_DIR/manager.url` (useful with `--listen HOST:0`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import signal
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import uvicorn

from treeherd.api.app import create_app
from treeherd.api.auth import RefusalSink, log_refusal
from treeherd.api.forwarding import FollowerForwarding
from treeherd.api.joined_writes import http_protocol
from treeherd.api.peer_certificates import http_peer_protocol, websocket_protocol
from treeherd.api.request_limits import RequestLimits, limited_protocol
from treeherd.api.tls_listener import tls_protocol_class
from treeherd.manager.admin_token import ensure_admin_token, fresh_component_token
from treeherd.manager.allocator import Allocator
from treeherd.manager.audit_trail import AuditTrail
from treeherd.manager.availability_board import AvailabilityBoard
from treeherd.manager.ca_rotation import AskRenewals, RotationDriver
from treeherd.manager.canary_judge import CanaryJudge
from treeherd.manager.cluster_ca import CaError, ClusterAuthority
from treeherd.manager.demo import load_demo
from treeherd.manager.dispatcher import Dispatcher
from treeherd.manager.dispatcher.renewals import Signer
from treeherd.manager.endpoints import Registry
from treeherd.manager.inventory import Inventory
from treeherd.manager.leadership import Leadership, list_managers
from treeherd.manager.orchestrator import Orchestrator
from treeherd.manager.scheduler import Scheduler
from treeherd.manager.supervisor import Component, Supervisor
from treeherd.model.errors import InvalidInput, Unavailable
from treeherd.model.managers import ManagerRecord, ManagerView
from treeherd.model.security import Role
from treeherd.runtime import new_id
from treeherd.store.base import Store
from treeherd.store.select import describe, make_store, open_for_serving, remember_cluster
from treeherd.transport.secret_files import InsecureSecret

log = logging.getLogger(__name__)
DEFAULT_LISTEN = "127.0.0.1:7400"


class StartupError(Exception):
    """The manager cannot start; the message says why and what to do."""


class LocalAccess(NamedTuple):
    """How a component of the manager's own process (`treeherd up`'s agent and gateway) reaches it:
    the URL, the cluster CA's certificate when it serves TLS, and a token per role when it requires
    authentication (made at this start, in memory only)."""

    url: str
    ca_file: Path | None = None
    tokens: dict[Role, str] = {}

    def token(self, role: Role) -> str:
        """The token of `role`; "" (present none) when the manager requires none."""
        return self.tokens.get(role, "")

    def tls(self) -> ssl.SSLContext | None:
        return None if self.ca_file is None else ssl.create_default_context(cafile=str(self.ca_file))


LOCAL_COMPONENT_TOKENS = {Role.AGENT: "up.agent", Role.GATEWAY: "up.gateway"}


def parse_listen(value: str) -> tuple[str, int]:
    """`HOST:PORT`, `[IPv6]:PORT` or `:PORT` (loopback)."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise InvalidInput(
            f"invalid listen address {value!r}: use HOST:PORT, e.g. 127.0.0.1:7400", field="listen"
        )
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port_text)


class _Server(uvicorn.Server):
    """uvicorn's server without its own signal handling: the process's supervisor owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ApiServer:
    """The HTTP API as a supervised component, on a socket bound before `run()` starts."""

    name = "api"

    def __init__(
        self,
        app: Any,
        sock: socket.socket,
        *,
        tls: tuple[Path, Path, Path] | None = None,
        limits: RequestLimits | None = None,
        trusted_roots: Callable[[], bytes] | None = None,
        refusals: RefusalSink = log_refusal,
    ) -> None:
        self._app = app
        self._refusals = refusals  # told of client certificates refused during a TLS handshake
        self._tls_context: ssl.SSLContext | None = None
        self._sock = sock
        self._limits = limits or RequestLimits()
        # (certificate chain, key, cluster CA) files: serve https and wss; client certificates of
        # the CA are asked for (optional: API clients may present a token instead) and verified.
        self._tls = tls
        # The roots a client certificate must come from now (a retired root's are refused even
        # though the TLS layer, which cannot forget a root, still verifies them).
        self._trusted_roots = trusted_roots
        self._server: _Server | None = None
        self._stop_requested = False

    async def run(self) -> None:
        tls: dict[str, Any] = {}
        if self._tls is not None:
            tls = {
                "ssl_certfile": str(self._tls[0]),
                "ssl_keyfile": str(self._tls[1]),
                "ssl_ca_certs": str(self._tls[2]),
                "ssl_cert_reqs": ssl.CERT_OPTIONAL,
                "ws": websocket_protocol(self._trusted_roots),
            }
        config = uvicorn.Config(
            self._app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=5,
            # No WebSocket pings: the one WebSocket route is the agent channel, whose heartbeats (and
            # the dispatcher's deadlines) find a dead peer sooner; at 5,000 agents uvicorn's pings,
            # one per connection every 20 s, were a quarter of the channel's idle frames.
            ws_ping_interval=None,
            ws_ping_timeout=None,
            http=http_protocol(http_peer_protocol(limited_protocol(self._limits), self._trusted_roots)),
            **tls,
        )
        config.load()
        if config.ssl is not None:
            # The TLS protocol set up here, in front of uvicorn's: see api.tls_listener.
            self._tls_context, config.ssl = config.ssl, None
            config.http_protocol_class = tls_protocol_class(
                config.http_protocol_class, self._tls_context, self._refusals
            )
        self._server = _Server(config)
        if self._stop_requested:
            return
        await self._server.serve(sockets=[self._sock])

    def reload_tls(self) -> None:
        """Take up the certificate files again (a root rotation re-issued them), for new connections;
        the CA file's roots are added to those trusted at the TLS layer (open connections stay)."""
        context = self._tls_context
        if self._tls is None or context is None:
            return
        context.load_cert_chain(str(self._tls[0]), str(self._tls[1]))
        context.load_verify_locations(cafile=str(self._tls[2]))

    def stop(self) -> None:
        self._stop_requested = True
        if self._server is not None:
            self._server.should_exit = True


class LeaderTerm:
    """The components only a leader runs, made anew for each leadership term."""

    def __init__(
        self,
        store: Store,
        managers: Sequence[str] | Callable[[], list[str]],
        board: AvailabilityBoard,
        sign: Signer,
        etcd_endpoints: Sequence[tuple[str, int]] | None = None,
        *,
        refusals: RefusalSink | None = None,
    ) -> None:
        registry = Registry(store)
        self.dispatcher = Dispatcher(
            store, managers=managers, registry=registry, sign=sign, refusals=refusals
        )
        self.components: list[Component] = [
            self.dispatcher,
            registry,
            Orchestrator(store),
            Allocator(store),
            Scheduler(store),
            CanaryJudge(store, board),
        ]
        if etcd_endpoints is not None:
            from treeherd.manager.registry_keys import RegistryKeys  # loaded only for a manager on etcd

            self.components.append(RegistryKeys(store, registry, etcd_endpoints))


def _leadership(
    store: Store, store_spec: str, url: str, board: AvailabilityBoard, sign: Signer, refusals: RefusalSink
) -> Leadership:
    """The leadership component of a manager on etcd (loaded only for one)."""
    from treeherd.store.etcd import EtcdStore
    from treeherd.store.etcd_client import parse_etcd_url
    from treeherd.store.etcd_election import Election

    assert isinstance(store, EtcdStore)
    etcd_url = parse_etcd_url(store_spec)
    election = Election(etcd_url, ManagerRecord(id=new_id(), url=url))

    def managers() -> list[str]:  # this leader first, then the others as they come and go
        return [url] + [m for m in known_managers(leadership) if m != url]

    def make_term() -> LeaderTerm:
        return LeaderTerm(store, managers, board, sign, etcd_url.endpoints, refusals=refusals)

    leadership = Leadership(election, store, make_term)
    return leadership


async def _open_authority(
    store_spec: str | None, data_dir: Path, now: datetime, external: tuple[Path, Path] | None
) -> ClusterAuthority:
    """This manager's cluster CA: its own, or on etcd the one every manager of the cluster shares."""
    if store_spec is None or not store_spec.startswith("etcd://"):
        return ClusterAuthority.open(data_dir, now, external=external)
    from treeherd.store.etcd_client import parse_etcd_url
    from treeherd.store.etcd_secrets import SharedCaKey  # loaded only for a manager on etcd

    try:
        return await ClusterAuthority.open_shared(
            SharedCaKey(parse_etcd_url(store_spec)), data_dir, now, external=external
        )
    except Unavailable as error:
        raise CaError(f"cannot read the cluster CA shared in etcd: {error}") from None


def _applied(store: Store) -> Callable[[int], Awaitable[None]]:
    """The etcd store's wait for a revision to reach its working set."""
    from treeherd.store.etcd import EtcdStore

    assert isinstance(store, EtcdStore)
    return store.applied


def known_managers(leadership: Leadership) -> list[str]:
    """The managers' URLs the leader hands its agents (SwarmKit's session managers list)."""
    return [peer.url for peer in leadership.peers]


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        hint = (
            " (is another treeherd already running? choose another port with --listen HOST:PORT)"
            if error.errno == errno.EADDRINUSE
            else ""
        )
        raise StartupError(f"cannot listen on {host}:{port}: {error.strerror}{hint}") from None
    sock.listen(1024)
    sock.setblocking(False)
    return sock


@contextlib.contextmanager
def lock_data_dir(data_dir: Path) -> Iterator[None]:
    """Hold the data directory's lock for the life of the process."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StartupError(f"cannot create the data directory {data_dir}: {error.strerror}") from None
    path = data_dir / "manager.lock"
    handle = open(path, "a+")  # noqa: SIM115 - held open for the life of the process
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise StartupError(
            f"the data directory {data_dir} is in use by treeherd pid {holder}: stop it, or use another --data-dir"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


async def serve_manager(
    data_dir: Path,
    listen: str,
    *,
    demo: bool = False,
    local: Sequence[Callable[[LocalAccess], Component]] = (),
    store_spec: str | None = None,
    require_auth: bool = False,
    external_ca: tuple[Path, Path] | None = None,
    tls: bool = False,
    cert_expiry_s: float | None = None,
    extra_handlers: Sequence[Any] = (),
    on_listening: Callable[[str], None] | None = None,
    plain_errors: tuple[type[Exception], ...] = (),
) -> None:
    """Run a manager on `data_dir` until SIGTERM or SIGINT; each of `local` makes a component
    of this machine (an agent, a gateway: `treeherd up`) for the manager's URL, run in the same process.
    `require_auth`: every API call needs a token (the first admin's is written to the data directory);
    `extra_handlers`: routes served beside the API (the web console); `on_listening` is told the URL
    once the API listens; `plain_errors`: the local components' errors whose message says it all (a
    component failing with one is logged without a traceback, and ends this with a `StartupError`)."""
    host, port = parse_listen(listen)
    with lock_data_dir(data_dir):
        sock = bind_socket(host, port)
        try:
            store = make_store(store_spec, data_dir)
            await open_for_serving(store)
            remember_cluster(store, data_dir)
        except Exception as error:
            sock.close()
            raise StartupError(f"cannot open the store {describe(store_spec, data_dir)}: {error}") from None
        try:
            inventory = Inventory(store)
            try:
                authority = await _open_authority(store_spec, data_dir, inventory.clock(), external_ca)
            except (CaError, InsecureSecret) as error:
                raise StartupError(str(error)) from None
            if cert_expiry_s is not None:
                authority.node_lifetime = timedelta(seconds=cert_expiry_s)
            if require_auth:
                try:
                    await ensure_admin_token(inventory, data_dir)
                except InsecureSecret as error:
                    raise StartupError(str(error)) from None
            tokens: dict[Role, str] = {}
            if require_auth and local:
                for role, name in LOCAL_COMPONENT_TOKENS.items():
                    tokens[role] = await fresh_component_token(inventory, name, role)
            if demo:
                loaded = await load_demo(inventory)
                log.info("demo tree %s", "loaded" if loaded else "not loaded: the store is not empty")
            actual_host, actual_port = sock.getsockname()[:2]
            scheme = "https" if tls else "http"
            url = f"{scheme}://{'[' + actual_host + ']' if ':' in actual_host else actual_host}:{actual_port}"
            tls_files = None
            if tls:
                names = tuple(dict.fromkeys([actual_host, "127.0.0.1", "localhost", socket.gethostname()]))
                tls_files = (*authority.server_files(names, inventory.clock()), data_dir / "ca.crt")

            def roots_changed() -> None:
                if tls:
                    authority.server_files(names, inventory.clock())
                    api_server.reload_tls()

            board = AvailabilityBoard(clock=inventory.clock)
            trail = AuditTrail(inventory)
            sign: Signer = lambda csr, node_id, role: (  # noqa: E731
                authority.renew(csr, node_id, role, inventory.clock()),
                authority.trust_bundle(),
            )
            leadership: Leadership | None = None
            if store_spec is not None and store_spec.startswith("etcd://"):
                leadership = _leadership(store, store_spec, url, board, sign, trail.refused)
                ask_renewals: AskRenewals | None = None  # not yet across managers on etcd
                app_dispatcher: Any = leadership.door
                leader_components: list[Component] = [leadership]
            else:  # one manager: always the leader
                term = LeaderTerm(store, [url], board, sign, refusals=trail.refused)
                app_dispatcher = term.dispatcher
                ask_renewals = term.dispatcher.ask_renewals
                leader_components = list(term.components)
            # The other managers' certificates come from the same (shared) cluster CA.
            peer_ca: str | bool = str(data_dir / "ca.crt") if tls else True
            if leadership is not None:
                led = leadership
                managers = lambda: list_managers(led, store.revision, verify=peer_ca)  # noqa: E731
            else:

                async def managers() -> list[ManagerView]:
                    return [ManagerView(id="", url=url, role="leader", revision=store.revision, lag=0)]

            app: Any = create_app(
                inventory,
                app_dispatcher,
                board,
                require_auth=require_auth,
                authority=authority,
                extra_handlers=extra_handlers,
                managers=managers,
                refusals=trail.refused,
            )
            rotation = RotationDriver(
                authority, inventory, ask_renewals, clock=inventory.clock, roots_changed=roots_changed
            )
            app.state.ca_rotation_nudge = rotation.nudge
            if leadership is not None:  # reads stamped with their revision; a follower forwards writes
                app = FollowerForwarding(
                    app, leadership, lambda: store.revision, _applied(store), verify=peer_ca
                )
            api_server = ApiServer(
                app,
                sock,
                tls=tls_files,
                trusted_roots=authority.trust_bundle if tls else None,
                refusals=trail.refused,
            )
            components: list[Component] = [
                api_server,
                trail,
                rotation,
                *leader_components,
            ]
            access = LocalAccess(url, data_dir / "ca.crt" if tls else None, tokens)
            components.extend(make(access) for make in local)
            supervisor = Supervisor(components, plain_errors=plain_errors)
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, supervisor.stop)
            (data_dir / "manager.url").write_text(url + "\n")
            if on_listening is not None:
                on_listening(url)
            log.info(
                "treeherd manager listening on %s (OpenAPI document at %s/openapi.json, data in %s)",
                url,
                url,
                data_dir,
            )
            try:
                await supervisor.run()
            except ExceptionGroup as group:  # e.g. `up`'s own agent cannot use its DB: say so plainly
                plain = group.subgroup(lambda error: isinstance(error, plain_errors))
                if plain is None:
                    raise
                raise StartupError(str(plain.exceptions[0])) from None
            finally:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
                with contextlib.suppress(FileNotFoundError):
                    (data_dir / "manager.url").unlink()
        finally:
            sock.close()
            await store.close()
