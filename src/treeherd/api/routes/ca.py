"""The cluster CA's rotation: its progress (`GET /api/v1/cluster/ca/rotation`) and its start
(`POST /api/v1/cluster/ca/rotate`, with a new root made here or an external one given); admins only."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from litestar import Controller, Request, get, post

from treeherd.manager.ca_rotation import admitted_nodes
from treeherd.manager.cluster_ca import ClusterAuthority
from treeherd.manager.inventory import Inventory
from treeherd.model.errors import InvalidInput
from treeherd.model.security import CaRotate, CaStatus

audit = logging.getLogger("treeherd.audit")


class CaController(Controller):
    path = "/api/v1/cluster/ca"
    tags = ["join"]

    @get("/rotation", summary="The cluster CA's digest and a rotation's progress (nodes done and pending)")
    async def rotation(self, authority: ClusterAuthority, inventory: Inventory) -> CaStatus:
        return authority.status(admitted_nodes(inventory))

    @post(
        "/rotate",
        summary="Rotate the root CA: a new root cross-signed by the old, every node re-issued, the old retired",
        status_code=202,
    )
    async def rotate(
        self,
        request: Request[Any, Any, Any],
        authority: ClusterAuthority,
        inventory: Inventory,
        data: CaRotate,
    ) -> CaStatus:
        external: tuple[bytes, bytes] | None = None
        if data.external_ca_cert_pem or data.external_ca_key_pem:
            if not (data.external_ca_cert_pem and data.external_ca_key_pem):
                raise InvalidInput(
                    "an external CA needs both its certificate and its key", field="external_ca_key_pem"
                )
            external = (data.external_ca_cert_pem.encode(), data.external_ca_key_pem.encode())
        authority.begin_rotation(inventory.clock(), external=external)
        audit.info("root CA rotation begun (%s root)", "external" if external else "new")
        nudge: Callable[[], None] | None = getattr(request.app.state, "ca_rotation_nudge", None)
        if nudge is not None:
            nudge()
        return authority.status(admitted_nodes(inventory))
