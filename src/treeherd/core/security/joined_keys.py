"""Keys that joined: each public key joins the cluster once. The record made with a join, and the
refusal of a join whose key joined before (a join request sent again, by its node or by whoever
captured it: the certificate would be useless without the key, but a node's key names one node)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from treeherd.core.view import View
from treeherd.model.errors import Unauthenticated
from treeherd.model.ops import Create, Op
from treeherd.model.security import JoinedKey


def join_refused() -> Unauthenticated:
    return Unauthenticated(
        "the join was refused: a node joins once, with a key of its own and a current token"
    )


def joined_before(view: View, key_sha256: str) -> JoinedKey | None:
    """The record of this key's earlier join, if it joined before."""
    return view.lookup(JoinedKey, "key_sha256", key_sha256)


def plan_record_join(
    view: View, key_sha256: str, node_id: str, now: datetime, new_id: Callable[[], str]
) -> list[Op]:
    """The record of a join; refused (401, no detail) when the key joined before."""
    if joined_before(view, key_sha256) is not None:
        raise join_refused()
    record = JoinedKey(id=new_id(), created_at=now, updated_at=now, key_sha256=key_sha256, node_id=node_id)
    return [Create(record)]
