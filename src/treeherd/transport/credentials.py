"""The bearer token a client presents: from a file (TREEHERD_TOKEN_FILE) or the environment
(TREEHERD_TOKEN), never from the command line, where `ps` would show it to every user."""

from __future__ import annotations

import os
from pathlib import Path

from treeherd.transport.secret_files import InsecureSecret, read_secret

TOKEN_ENV = "TREEHERD_TOKEN"
TOKEN_FILE_ENV = "TREEHERD_TOKEN_FILE"
AUTH_HINT = (
    f"set {TOKEN_FILE_ENV} to a token file (a manager run with --require-auth writes an admin token to"
    " DATA_DIR/secrets/admin.token; `treeherd token create` makes others)"
)


class CredentialError(Exception):
    """The configured token cannot be used; the message says why."""


def bearer_token() -> str | None:
    """The token this process presents, or None when none is configured."""
    text = os.environ.get(TOKEN_ENV, "").strip()
    if text:
        return text
    path = os.environ.get(TOKEN_FILE_ENV, "").strip()
    if not path:
        return None
    try:
        return read_secret(Path(path)).decode().strip() or None
    except FileNotFoundError:
        raise CredentialError(f"{TOKEN_FILE_ENV} names {path}, which does not exist") from None
    except InsecureSecret as error:
        raise CredentialError(str(error)) from None
    except (OSError, UnicodeDecodeError) as error:
        raise CredentialError(f"cannot read the token file {path}: {error}") from None


def authorization(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}
