"""The first administrator's token: made when a manager that requires authentication first starts;
and the tokens of the components `treeherd up` runs in the manager's own process (made afresh at each
start, kept in memory only).

It is written to DATA_DIR/secrets/admin.token (0600, in a 0700 directory) and nowhere else: not to
the log, not to the store (which keeps its digest). Made once per cluster: a cluster whose admin
token exists gets no new one (remove it with `treeherd token rm admin` from another admin token, or
make a new one with the manager stopped... see the README's security section).
"""

from __future__ import annotations

import logging
import secrets
from pathlib import Path

from treeherd.core.security.api_tokens import SECRET_BYTES, plan_create_token, plan_delete_token
from treeherd.core.view import View
from treeherd.manager.inventory import Inventory
from treeherd.model.ops import Op
from treeherd.model.security import ApiToken, Role, TokenCreate
from treeherd.transport.secret_files import ensure_private_dir, write_secret

log = logging.getLogger(__name__)
ADMIN_TOKEN_NAME = "admin"


def admin_token_path(data_dir: Path) -> Path:
    return data_dir / "secrets" / "admin.token"


async def ensure_admin_token(inventory: Inventory, data_dir: Path) -> None:
    """Make the cluster's first admin token and write it to the data directory, if it has none."""
    path = admin_token_path(data_dir)
    ensure_private_dir(path.parent)
    if inventory.view.lookup(ApiToken, "name", ADMIN_TOKEN_NAME) is not None:
        if not path.exists():
            log.warning(
                "authentication is required and the cluster's admin token exists, but not in %s:"
                " use the admin token you were given (or another admin's) in TREEHERD_TOKEN_FILE",
                path,
            )
        return
    made: list[str] = []

    def plan(view: View) -> list[Op]:
        request = TokenCreate(name=ADMIN_TOKEN_NAME, role=Role.ADMIN)
        ops, text = plan_create_token(
            view, request, inventory.clock(), inventory.ids, secrets.token_bytes(SECRET_BYTES)
        )
        made.append(text)
        return ops

    await inventory.apply(plan)
    write_secret(path, (made[-1] + "\n").encode())
    log.info("the cluster's admin token is in %s (TREEHERD_TOKEN_FILE=%s)", path, path)


async def fresh_component_token(inventory: Inventory, name: str, role: Role) -> str:
    """A new token named `name` with `role` for a component of this process, replacing the one of that
    name made at the last start: its text lives in this process's memory only."""
    if inventory.view.lookup(ApiToken, "name", name) is not None:
        await inventory.apply(lambda view: plan_delete_token(view, name))
    made: list[str] = []

    def plan(view: View) -> list[Op]:
        request = TokenCreate(name=name, role=role)
        ops, text = plan_create_token(
            view, request, inventory.clock(), inventory.ids, secrets.token_bytes(SECRET_BYTES)
        )
        made.append(text)
        return ops

    await inventory.apply(plan)
    return made[-1]
