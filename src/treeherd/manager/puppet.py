"""The Puppet service of the manager: the class catalog, the ENC answers and the asset agent's reports.

Each write is a core plan committed with version checks (made again if it loses a race). The ENC answer
is computed from the in-memory view; only a change in a host's conflict state writes (a
`puppet_conflict` record created, updated or deleted), and a failure to record one never keeps Puppet
from getting its answer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from treeherd.core.cluster import current_settings
from treeherd.core.puppet import enc
from treeherd.core.puppet import puppet as catalog_plans
from treeherd.core.tree import provisioning
from treeherd.core.view import View
from treeherd.manager.commits import commit_plan
from treeherd.model.enc import EncAnswer, UnknownHost
from treeherd.model.errors import NotFound, TreeherdError
from treeherd.model.objects import Machine, ProvisioningRecord, TreeNode
from treeherd.model.ops import Assert, Create, Delete, Op
from treeherd.model.provisioning import MachineReport, ReportResult
from treeherd.model.puppet import CatalogChange, CatalogSync, PuppetCatalog, PuppetConflict
from treeherd.runtime import new_id, utc_now
from treeherd.store.base import Store

__all__ = ["Puppet"]

log = logging.getLogger(__name__)


class Puppet:
    """Catalog, ENC and reports over one store."""

    def __init__(
        self,
        store: Store,
        *,
        clock: Callable[[], datetime] = utc_now,
        ids: Callable[[], str] = new_id,
    ) -> None:
        self.store = store
        self._clock = clock
        self._ids = ids

    # ---- the class catalog -----------------------------------------------------------------------
    def catalog(self) -> PuppetCatalog | None:
        return catalog_plans.catalog_of(self.store.view())

    async def sync(self, request: CatalogSync) -> CatalogChange:
        outcome: list[CatalogChange] = []

        def plan(view: View) -> list[Op]:
            settings = current_settings(view, self._clock())
            ops, change = catalog_plans.plan_sync_catalog(view, request, settings, self._clock(), self._ids)
            outcome[:] = [change]
            return [] if request.dry_run else ops

        await commit_plan(self.store, plan)  # an empty plan (a dry run, no change) writes nothing
        return outcome[0]

    def conflicts(self) -> list[PuppetConflict]:
        return sorted(self.store.view().all(PuppetConflict), key=lambda c: c.hostname)

    # ---- the ENC ---------------------------------------------------------------------------------
    async def enc(self, hostname: str, unknown: UnknownHost | None = None) -> EncAnswer:
        view = self.store.view()
        settings = current_settings(view, self._clock())
        try:
            answer = enc.classify(view, hostname, settings, unknown)
        except NotFound:
            await self._record(hostname, None)
            raise
        await self._record(answer.hostname, answer)
        return answer

    async def _record(self, hostname: str, answer: EncAnswer | None) -> None:
        """Keep the host's conflict record in step; only a change writes."""
        host = hostname.strip().lower()
        if not enc.conflict_ops(self.store.view(), host, answer, self._clock(), self._ids):
            return
        if answer is not None and answer.source == "conflict":
            log.warning(
                "puppet conflict: %s got only the default class (%s)",
                host,
                answer.parameters.get("treeherd_conflict_reason"),
            )
        try:
            await commit_plan(
                self.store, lambda v: enc.conflict_ops(v, host, answer, self._clock(), self._ids)
            )
        except TreeherdError as error:
            log.warning("could not record the puppet conflict of %s: %s", host, error.detail)

    # ---- the asset agent's report ----------------------------------------------------------------
    async def report(self, request: MachineReport) -> ReportResult:
        made: list[Op] = []

        def plan(view: View) -> list[Op]:
            made[:] = provisioning.plan_report(view, request, self._clock(), self._ids)
            return made

        await commit_plan(self.store, plan)
        view = self.store.view()
        machine = view.get(Machine, made[0].object.id)
        assert machine is not None
        record = next((op.object for op in made if isinstance(op, Delete)), None)
        node = view.get(TreeNode, record.node_id) if isinstance(record, ProvisioningRecord) else None
        return ReportResult(
            machine=machine,
            created=isinstance(made[0], Create),
            changed=any(not isinstance(op, Assert) for op in made),
            bound=node.path if node is not None else None,
        )
