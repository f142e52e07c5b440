"""User certificates on record: the record made when the CA issues one, their revocation by name, and
whether a presented certificate may authenticate (on record, not revoked)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import msgspec

from treeherd.core.view import View
from treeherd.model.errors import NotFound
from treeherd.model.ops import Create, Op, Update
from treeherd.model.security import Role, UserCertificate


def plan_record_user_cert(
    view: View,
    name: str,
    role: Role,
    serial: int,
    expires_at: datetime,
    now: datetime,
    new_id: Callable[[], str],
) -> list[Op]:
    """The record of a user certificate just issued."""
    record = UserCertificate(
        id=new_id(),
        created_at=now,
        updated_at=now,
        name=name,
        role=role,
        serial=format(serial, "x"),
        expires_at=expires_at,
    )
    return [Create(record)]


def plan_revoke_user_certs(view: View, name: str, now: datetime) -> list[Op]:
    """Revoke every certificate of user `name` still valid and not yet revoked; NotFound if none is."""
    live = [
        c for c in view.where(UserCertificate, "name", name) if c.revoked_at is None and c.expires_at > now
    ]
    if not live:
        raise NotFound(
            f"user {name!r} has no valid certificate to revoke: `treeherd cert ls` lists them", field="name"
        )
    return [Update(msgspec.structs.replace(c, revoked_at=now, updated_at=now)) for c in live]


def user_cert_refusal(view: View, serial: int) -> str | None:
    """Why a user certificate (verified by the TLS layer) may not authenticate, or None if it may."""
    record = view.lookup(UserCertificate, "serial", format(serial, "x"))
    if record is None:
        return "a user certificate this cluster has no record of"
    if record.revoked_at is not None:
        return f"the certificate of user {record.name} was revoked"
    return None
