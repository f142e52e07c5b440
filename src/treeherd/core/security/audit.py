"""The audit log of refusals: appending refused authentications and authorisations to the one
`AuditLog` object, which keeps the latest and counts them all."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import msgspec

from treeherd.core.view import View
from treeherd.model.ops import Create, Op, Update
from treeherd.model.security import AuditLog, Refusal

AUDIT_LOG_NAME = "refusals"
KEEP = 100


def plan_record_refusals(
    view: View, refusals: list[Refusal], dropped: int, now: datetime, new_id: Callable[[], str]
) -> list[Op]:
    """Add `refusals` (and `dropped`, a count of those not kept) to the audit log, making it if new."""
    if not refusals and not dropped:
        return []
    current = view.lookup(AuditLog, "name", AUDIT_LOG_NAME)
    if current is None:
        made = AuditLog(
            id=new_id(),
            created_at=now,
            updated_at=now,
            name=AUDIT_LOG_NAME,
            recent=refusals[-KEEP:],
            refused_total=len(refusals) + dropped,
            dropped_total=dropped,
        )
        return [Create(made)]
    return [
        Update(
            msgspec.structs.replace(
                current,
                updated_at=now,
                recent=[*current.recent, *refusals][-KEEP:],
                refused_total=current.refused_total + len(refusals) + dropped,
                dropped_total=current.dropped_total + dropped,
            )
        )
    ]
