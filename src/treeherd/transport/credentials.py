"""What a client presents and trusts: the bearer token, from a file (TREEHERD_TOKEN_FILE) or the
environment (TREEHERD_TOKEN), never from the command line, where `ps` would show it to every user; and
the cluster CA a TLS manager's certificate is checked against (TREEHERD_CA_FILE, the manager's
DATA_DIR/ca.crt)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import ssl

CA_FILE_ENV = "TREEHERD_CA_FILE"
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
    # Imported here: the ENC, which calls this on every Puppet run, stays quick without a token file.
    from pathlib import Path

    from treeherd.transport.secret_files import InsecureSecret, read_secret

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


def tls_context() -> ssl.SSLContext:
    """The context for https/wss to a manager: the cluster CA of TREEHERD_CA_FILE when set (a
    treeherd manager's certificate is issued by its cluster CA), else the system's trusted roots."""
    import ssl  # here: the ENC, which reads tokens too, stays quick to start over plain http

    path = os.environ.get(CA_FILE_ENV, "").strip()
    if not path:
        return ssl.create_default_context()
    try:
        return ssl.create_default_context(cafile=path)
    except (OSError, ssl.SSLError) as error:
        raise CredentialError(
            f"{CA_FILE_ENV} names {path}, which is not a readable PEM certificate: {error}"
        ) from None


TLS_HINT = (
    f"the manager's certificate was not verified: set {CA_FILE_ENV} to its cluster CA certificate"
    " (DATA_DIR/ca.crt on the manager)"
)
