"""Managers of one cluster: what each candidate for leadership says of itself, and how the API shows them."""

from __future__ import annotations

from typing import Literal

import msgspec


class ManagerRecord(msgspec.Struct, frozen=True, kw_only=True):
    """The value of a manager's election key: who it is and where its API listens."""

    id: str
    url: str


class ManagerView(msgspec.Struct, frozen=True, kw_only=True):
    """One manager as `/api/v1/managers` lists it."""

    id: str
    url: str
    role: Literal["leader", "follower"]
    revision: int | None = None  # the store revision it has applied (known for the answering manager)
    lag: int | None = None  # revisions it is behind the leader's store (known for the answering manager)
