"""Joining the cluster: the CA's certificate (public), the join tokens and their rotation (admins),
and `POST /api/v1/join`, where a node with a valid join token gets its certificate."""

from __future__ import annotations

import logging
from typing import Any

from litestar import Controller, Request, get, post

from treeherd.api.auth import RefusalSink
from treeherd.core.security.joined_keys import join_refused, joined_before, plan_record_join
from treeherd.manager.cluster_ca import ClusterAuthority
from treeherd.manager.inventory import Inventory
from treeherd.model.errors import InvalidInput, TreeherdError
from treeherd.model.security import JoinAnswer, JoinRequest, JoinRole, JoinTokens
from treeherd.transport.pki import CertificateError, csr_key_sha256

audit = logging.getLogger("treeherd.audit")


class JoinController(Controller):
    path = "/api/v1"
    tags = ["join"]

    @get(
        "/cluster/ca",
        summary="The cluster CA's certificate (PEM); a joining node checks it against its token",
    )
    async def ca_certificate(self, authority: ClusterAuthority) -> str:
        return authority.ca.cert_pem.decode()

    @get("/cluster/join-tokens", summary="The join tokens of workers and managers")
    async def join_tokens(self, authority: ClusterAuthority) -> JoinTokens:
        await authority.refresh()
        return authority.tokens()

    @post(
        "/cluster/join-tokens/{role:str}/rotate",
        summary="A new join token for a role; the old one admits no one",
    )
    async def rotate(self, authority: ClusterAuthority, role: JoinRole) -> JoinTokens:
        await authority.rotate_shared(role)
        audit.info("the %s join token was rotated", role.value)
        return authority.tokens()

    @post("/join", summary="Join with a join token: a certificate for the node's key, naming its new node id")
    async def join(
        self,
        request: Request[Any, Any, Any],
        authority: ClusterAuthority,
        inventory: Inventory,
        data: JoinRequest,
    ) -> JoinAnswer:
        where = request.client.host if request.client else "?"
        refusals: RefusalSink = request.app.state.refusals
        await authority.refresh()  # join secrets rotated through another manager
        replayed = False
        try:
            # The token first (a stranger learns nothing else), then the request, then whether its key
            # joined before: the certificate just made is then dropped, never handed out.
            answer = authority.join(data, inventory.ids(), inventory.clock())
            key = _key_of(data)
            if joined_before(inventory.view, key) is not None:
                replayed = True
                raise join_refused()
            await inventory.apply(
                lambda view: plan_record_join(view, key, answer.node_id, inventory.clock(), inventory.ids)
            )
        except TreeherdError as error:
            reason = "a key that joined before (a replayed join)" if replayed else error.code
            refusals(address=where, what="POST /api/v1/join", reason=reason)
            raise
        except Exception:
            refusals(address=where, what="POST /api/v1/join", reason="failed")
            raise
        audit.info("node %s joined as %s from %s", answer.node_id, answer.role.value, where)
        return answer


def _key_of(data: JoinRequest) -> str:
    try:
        return csr_key_sha256(data.csr_pem.encode())
    except CertificateError as error:
        raise InvalidInput(str(error), field="csr_pem") from None
