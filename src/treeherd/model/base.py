"""The fields every stored object has, whatever its kind."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

import msgspec


class Object(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", forbid_unknown_fields=True):
    """Fields every stored object has."""

    kind: ClassVar[str]
    id: str
    version: int = 0
    created_at: datetime
    updated_at: datetime
