"""A schemathesis check for the viewer-token run of tests/api/test_contract_schemathesis.py: no request
that writes (POST, PUT, PATCH, DELETE) succeeds. Loaded by schemathesis through SCHEMATHESIS_HOOKS."""

from __future__ import annotations

from typing import Any

import schemathesis

WRITES = {"POST", "PUT", "PATCH", "DELETE"}


@schemathesis.check
def no_write_succeeds(ctx: Any, response: Any, case: Any) -> bool | None:
    if case.method.upper() in WRITES and 200 <= response.status_code < 300:
        raise AssertionError(
            f"{case.method.upper()} {case.formatted_path} answered {response.status_code} to a viewer token"
        )
    return None
