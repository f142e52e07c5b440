"""Takes a routing snapshot to the live nginx safely (N4): render, stage, validate with the real
`nginx -t`, swap atomically, reload only when the bytes changed, roll back when the reload fails.

A configuration that `nginx -t` refuses never becomes current. A reload nginx refuses (a port taken
since validation, for instance) points `current` back at the previous release; the master itself kept
serving the previous configuration. A start that finds the pid file of a dead master says so in its
event with the cause (`proxy restarted: master pid N died (signal 9, SIGKILL)`, or why a hung master
was ended); nginx ends that master's leftovers first. Each render ends in exactly one recorded event: unchanged, started,
reload, rejected or rollback, with the reason.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Literal

import msgspec

from treeherd.model.gateway import Figure, GatewayEventType
from treeherd.model.routing import RoutingSnapshot
from treeherd.proxy.nginx import Nginx, NginxError
from treeherd.proxy.releases import DIGEST_CHARS, Releases
from treeherd.render.nginx import (
    ROUTING_FILE,
    MainOptions,
    RenderOptions,
    config_digest,
    render_main,
    render_nginx,
)

log = logging.getLogger(__name__)
Outcome = Literal["unchanged", "started", "reload", "rejected", "rollback"]
Recorder = Callable[[GatewayEventType, str, dict[str, Figure], str | None], Awaitable[None]]


class ApplyResult(msgspec.Struct, frozen=True, kw_only=True):
    outcome: Outcome
    digest: str
    reason: str


class Configurator:
    """The rendered configuration of one nginx prefix."""

    def __init__(self, nginx: Nginx, options: RenderOptions, record: Recorder) -> None:
        self.nginx = nginx
        self.options = options
        self.releases = Releases(nginx.prefix / "rendered")
        self._record = record
        self._rejected: str | None = None

    def _main_options(self, include: str) -> MainOptions:
        return MainOptions(
            include_path=include,
            pid_path=str(self.nginx.pid_path),
            error_log_path=str(self.nginx.error_log),
            temp_dir=str(self.nginx.temp_dir),
        )

    def prepare(self) -> None:
        """Directories, and the main configuration that includes whatever release is current."""
        for directory in (self.nginx.prefix / "logs", self.nginx.temp_dir):
            directory.mkdir(parents=True, exist_ok=True)
        # The logs (clients' addresses, the master's pid) are the gateway's user's only: nginx's master
        # opens them, its workers write through the descriptors they inherit. The temporary files'
        # directory stays open to the workers, which may run as another user.
        (self.nginx.prefix / "logs").chmod(0o700)
        log_dir = Path(self.options.log_dir)
        (log_dir if log_dir.is_absolute() else self.nginx.prefix / log_dir).mkdir(parents=True, exist_ok=True)
        self.releases.prepare()
        main = render_main(self._main_options(f"{self.releases.current}/*.conf"))
        path = self.nginx.main_conf
        if not path.exists() or path.read_text() != main:
            temporary = path.with_name(".nginx.conf.tmp")
            temporary.write_text(main)
            temporary.replace(path)

    async def apply(self, snapshot: RoutingSnapshot, why: str) -> ApplyResult:
        rendered = render_nginx(snapshot, self.options)
        files = {ROUTING_FILE: rendered.text}
        digest = config_digest(files)
        short = digest[:DIGEST_CHARS]
        figures: dict[str, Figure] = {
            "revision": snapshot.revision,
            "upstreams": len(rendered.table.upstreams),
            "servers": len(rendered.table.servers),
            "problems": len(rendered.problems),
        }
        notes = "" if not rendered.problems else " (left out: " + "; ".join(rendered.problems[:5]) + ")"
        running = self.nginx.master_pid()
        if running is not None and self.releases.current_digest() == short:
            return await self._done(
                "unchanged", digest, f"{why}: the configuration is unchanged, no reload", figures
            )
        if digest == self._rejected and running is not None:
            return ApplyResult(outcome="rejected", digest=digest, reason="already rejected")
        release = self.releases.stage(digest, files)
        test_conf = self.releases.root / f".test-{short}.conf"
        test_conf.write_text(render_main(self._main_options(f"{release}/*.conf")))
        try:
            await self.nginx.validate(test_conf)
        except NginxError as error:
            self._rejected = digest
            if self.releases.current_digest() != short:
                self.releases.prune()
            return await self._done(
                "rejected",
                digest,
                f"{why}: nginx -t refused the new configuration, the live one stays: {error}",
                figures,
            )
        finally:
            with contextlib.suppress(FileNotFoundError):
                test_conf.unlink()
        self._rejected = None
        previous = self.releases.current_digest()
        self.releases.activate(digest)
        if running is None:
            dead = self.nginx.recorded_pid()  # a pid file without its master: the master died
            if dead is not None:
                why = f"proxy restarted: {self.nginx.cause_of_death(dead)}; {why}"
            try:
                pid = await self.nginx.start()
            except NginxError as error:
                self.releases.rollback()
                return await self._done(
                    "rollback",
                    digest,
                    f"{why}: nginx did not start on the new configuration: {error}",
                    figures,
                )
            figures["pid"] = pid
            return await self._done(
                "started",
                digest,
                f"{why}: nginx started (pid {pid}) on configuration {short}{notes}",
                figures,
            )
        try:
            await self.nginx.reload()
        except NginxError as error:
            restored = self.releases.rollback()
            return await self._done(
                "rollback",
                digest,
                f"{why}: nginx refused to reload configuration {short} ({error}); configuration"
                f" {restored or 'none'} stays live",
                figures,
            )
        self.releases.prune()
        return await self._done(
            "reload",
            digest,
            f"{why}: reloaded nginx with configuration {short} (was {previous or 'none'}){notes}",
            figures,
        )

    async def _done(
        self, outcome: Outcome, digest: str, reason: str, figures: dict[str, Figure]
    ) -> ApplyResult:
        live = self.releases.current_digest()
        await self._record(outcome, reason, figures, live)
        return ApplyResult(outcome=outcome, digest=digest, reason=reason)
