"""The cluster CA's rotation: its progress (`GET /api/v1/cluster/ca/rotation`) and its start
(`POST /api/v1/cluster/ca/rotate`, with a new root made here or an external one given); and user
certificates for the API: issued and recorded (`POST /api/v1/certs`, `treeherd cert create`), listed
(`GET`, `cert ls`) and revoked by name (`DELETE /api/v1/certs/NAME`, `cert rm`). Admins only."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from litestar import Controller, Request, delete, get, post
from litestar.status_codes import HTTP_204_NO_CONTENT

from treeherd.api.auth import USER_CERTIFICATE_PREFIX, USER_CERTIFICATE_ROLES
from treeherd.core.security.user_certs import plan_record_user_cert, plan_revoke_user_certs
from treeherd.manager.ca_rotation import admitted_nodes
from treeherd.manager.cluster_ca import ClusterAuthority
from treeherd.manager.inventory import Inventory
from treeherd.model.errors import InvalidInput
from treeherd.model.security import CaRotate, CaStatus, CertCreate, CertIssued, UserCertificate
from treeherd.transport.pki import CertificateError, identity_of

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


class CertController(Controller):
    path = "/api/v1/certs"
    tags = ["tokens"]

    @post(
        "",
        summary="A user certificate for the API (its role in the subject), for the key of a signing request",
    )
    async def create(self, authority: ClusterAuthority, inventory: Inventory, data: CertCreate) -> CertIssued:
        if data.role.value not in USER_CERTIFICATE_ROLES:
            raise InvalidInput("a user certificate's role is admin, operator or viewer", field="role")
        try:
            cert = authority.issue_user(
                data.csr_pem.encode(), USER_CERTIFICATE_PREFIX + data.name, data.role.value, inventory.clock()
            )
        except CertificateError as error:
            raise InvalidInput(str(error), field="csr_pem") from None
        issued = identity_of(cert)
        await inventory.apply(
            lambda view: plan_record_user_cert(
                view, data.name, data.role, issued.serial, issued.not_after, inventory.clock(), inventory.ids
            )
        )  # on record before it is handed out: a certificate with no record authenticates no one
        audit.info("user certificate %s issued for the role %s", data.name, data.role.value)
        return CertIssued(cert_pem=cert.decode(), ca_cert_pem=authority.trust_bundle().decode())

    @get("", summary="The user certificates issued: name, role, serial, expiry, revocation")
    async def list_certs(self, inventory: Inventory) -> list[UserCertificate]:
        return sorted(inventory.view.all(UserCertificate), key=lambda c: (c.name, c.created_at))

    @delete(
        "/{name:str}",
        summary="Revoke every certificate of a user: refused from the next request on",
        status_code=HTTP_204_NO_CONTENT,
    )
    async def revoke(self, inventory: Inventory, name: str) -> None:
        await inventory.apply(lambda view: plan_revoke_user_certs(view, name, inventory.clock()))
        audit.info("the certificates of user %s were revoked", name)
