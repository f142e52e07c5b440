"""The canary judge component: every second, each service whose canary serves is judged on what the
gateways last reported (`core.edge.canary_windows.canary_figures`, `core.tasks.canary.judge`), and an
abort or a promotion is committed with the verdict's figures on the service's update status (which
the store's event stream carries: `treeherd events` shows it).

The figures are measurements the gateways send to the manager's memory (`AvailabilityBoard`), not
store state: a manager that restarts judges again from the gateways' next reports. Stale reports (a
gateway that stopped reporting) are left out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime

from treeherd.core.edge.canary_windows import Versions, canary_figures, task_versions
from treeherd.core.tasks.canary import Verdict, aborted, judge, promoted, under_canary
from treeherd.core.view import View
from treeherd.manager.availability_board import AvailabilityBoard
from treeherd.manager.commits import Exhausted, commit_plan
from treeherd.model.availability import ServiceAvailability
from treeherd.model.errors import TreeherdError
from treeherd.model.ops import Op, Update
from treeherd.model.services import Service
from treeherd.runtime import utc_now
from treeherd.store.base import Store

log = logging.getLogger(__name__)


class CanaryJudge:
    name = "canary-judge"

    def __init__(
        self,
        store: Store,
        board: AvailabilityBoard,
        *,
        clock: Callable[[], datetime] = utc_now,
        interval_s: float = 1.0,
    ) -> None:
        self.store = store
        self.board = board
        self.clock = clock
        self.interval_s = interval_s
        self._stopped = asyncio.Event()
        self._said: dict[str, str] = {}

    async def run(self) -> None:
        while not self._stopped.is_set():
            await self.judge_all()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval_s):
                    await self._stopped.wait()

    def stop(self) -> None:
        self._stopped.set()

    async def judge_all(self) -> None:
        """Judge every canary that serves; commit the aborts and promotions."""
        view = self.store.view()
        serving = [
            s
            for s in view.all(Service)
            if under_canary(s)
            and s.update_status is not None
            and s.update_status.canary is not None
            and s.update_status.canary.serving_at is not None
        ]
        self._said = {k: v for k, v in self._said.items() if k in {s.id for s in serving}}
        if not serving:
            return
        now = self.clock()
        versions = task_versions(view)
        reports = [s for report, stale in self.board.reports() if not stale for s in report.services]
        for service in serving:
            verdict = self.verdict(service, reports, versions, now)
            if verdict.action == "wait":
                if self._said.get(service.id, "").split(":")[0] != verdict.reason.split(":")[0]:
                    log.info("canary of %s: %s", service.name, verdict.reason)
                self._said[service.id] = verdict.reason
                continue
            await self._apply(service, verdict, now)

    def verdict(
        self, service: Service, reports: list[ServiceAvailability], versions: Versions, now: datetime
    ) -> Verdict:
        status = service.update_status
        assert status is not None and status.canary is not None and status.canary.serving_at is not None
        mine = [r for r in reports if r.node_id == service.node_id]
        old, new = canary_figures(mine, versions, service.name, service.spec_version)
        serving_s = (now - status.canary.serving_at).total_seconds()
        return judge(status.canary.policy, old, new, serving_s)

    async def _apply(self, service: Service, verdict: Verdict, now: datetime) -> None:
        def plan(view: View) -> list[Op]:
            current = view.get(Service, service.id)
            if current is None or current.update_status != service.update_status:
                return []  # changed meanwhile (promoted or aborted by hand, updated): judged again
            if verdict.action == "abort":
                return [Update(aborted(current, now, verdict.reason, verdict))]
            return [Update(promoted(current, now, f"automatically, {verdict.reason}", verdict))]

        try:
            committed = await commit_plan(
                self.store, plan, what=f"canary verdict on {service.name}", exhausted=Exhausted.GIVE_UP
            )
        except TreeherdError as error:  # the service went away meanwhile, say: judged again next time
            log.warning("could not record the canary verdict on %s: %s", service.name, error.detail)
            return
        if committed is not None and committed.objects:
            what = "aborted" if verdict.action == "abort" else "promoted"
            log.warning("canary of %s %s: %s", service.name, what, verdict.reason)
