"""/api/v1/puppet, /api/v1/enc and /api/v1/machine-reports: the class catalog, the ENC answer of a host,
and the asset agent's reports."""

from __future__ import annotations

from litestar import Controller, get, post, put
from litestar.params import Parameter

from treeherd.manager.puppet import Puppet
from treeherd.model.enc import EncAnswer, UnknownHost
from treeherd.model.provisioning import MachineReport, ReportResult
from treeherd.model.puppet import CatalogChange, CatalogSync, PuppetClass, PuppetConflict


class PuppetController(Controller):
    path = "/api/v1/puppet"
    tags = ["puppet"]

    @get("/classes", summary="The class catalog: classes nodes may use, with parameters and parents")
    async def list_classes(self, puppet: Puppet) -> list[PuppetClass]:
        catalog = puppet.catalog()
        return list(catalog.classes) if catalog is not None else []

    @put(
        "/classes",
        summary="Replace the class catalog (refused while nodes use what it would drop, unless force)",
    )
    async def sync_classes(self, puppet: Puppet, data: CatalogSync) -> CatalogChange:
        return await puppet.sync(data)

    @get("/conflicts", summary="Hosts whose bound nodes' classes conflict (they get the default class)")
    async def list_conflicts(self, puppet: Puppet) -> list[PuppetConflict]:
        return puppet.conflicts()


class EncController(Controller):
    path = "/api/v1/enc"
    tags = ["puppet"]

    @get("/{hostname:str}", summary="The ENC answer for a host: classes, parameters, environment")
    async def classify(
        self,
        puppet: Puppet,
        hostname: str,
        unknown: UnknownHost | None = Parameter(
            default=None, description="for an unknown host: fail (404) or default; default: the cluster's"
        ),
    ) -> EncAnswer:
        return await puppet.enc(hostname, unknown)


class ReportController(Controller):
    path = "/api/v1/machine-reports"
    tags = ["machines"]

    @post(
        "/",
        summary="A host reports itself: register or update it, bind it to the node it was provisioned for",
        status_code=200,
    )
    async def report(self, puppet: Puppet, data: MachineReport) -> ReportResult:
        return await puppet.report(data)
