"""What a client talks to, presents and trusts, resolved in one place for every client (the CLI, the
gateway, the agent channel, the ENC): the managers' URLs, the bearer token, from a file
(TREEHERD_TOKEN_FILE) or the environment (TREEHERD_TOKEN), never from the command line, where `ps`
would show it to every user; and the cluster CA a TLS manager's certificate is checked against
(TREEHERD_CA_FILE, the manager's DATA_DIR/ca.crt).

Each setting comes from, first to last: the command line (`--manager` only), the environment, the
current client context (transport/contexts.py), the default. A context's token and CA are used only
with that context's own managers: pointing TREEHERD_MANAGER elsewhere does not send them there.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import ssl

    from treeherd.transport.contexts import ClientContext

DEFAULT_MANAGER = "http://127.0.0.1:7400"
MANAGER_ENV = "TREEHERD_MANAGER"
CA_FILE_ENV = "TREEHERD_CA_FILE"
TOKEN_ENV = "TREEHERD_TOKEN"
TOKEN_FILE_ENV = "TREEHERD_TOKEN_FILE"
CERT_FILE_ENV = "TREEHERD_CERT_FILE"  # a user certificate (with TREEHERD_KEY_FILE) instead of a token
KEY_FILE_ENV = "TREEHERD_KEY_FILE"
AUTH_HINT = (
    f"set {TOKEN_FILE_ENV} to a token file (a manager run with --require-auth writes an admin token to"
    " DATA_DIR/secrets/admin.token; `treeherd token create` makes others)"
)


class CredentialError(Exception):
    """The configured token cannot be used; the message says why."""


def _context(managers: Sequence[str] | str | None) -> ClientContext | None:
    """The current context, when it applies to `managers` (None: whichever the client uses)."""
    from treeherd.transport.contexts import ConfigError, current_context

    try:
        context = current_context()
    except ConfigError as error:
        raise CredentialError(str(error)) from None
    if context is None or managers is None:
        return context
    urls = managers.split(",") if isinstance(managers, str) else list(managers)
    return context if context.serves([url for url in urls if url.strip()]) else None


def manager_setting(explicit: str | None = None) -> str:
    """The managers to talk to (URLs separated by commas): `explicit` (the command line), else
    TREEHERD_MANAGER, else the current context's, else the default."""
    if explicit and explicit.strip():
        return explicit.strip()
    from_env = os.environ.get(MANAGER_ENV, "").strip()
    if from_env:
        return from_env
    context = _context(None)
    return ",".join(context.managers) if context is not None else DEFAULT_MANAGER


def bearer_token(managers: Sequence[str] | str | None = None) -> str | None:
    """The token this process presents to `managers`, or None when none is configured."""
    text = os.environ.get(TOKEN_ENV, "").strip()
    if text:
        return text
    path = os.environ.get(TOKEN_FILE_ENV, "").strip()
    source = TOKEN_FILE_ENV
    if not path:
        context = _context(managers)
        if context is None or not context.token_file:
            return None
        path, source = context.token_file, f"the context {context.name!r}"
    # Imported here: the ENC, which calls this on every Puppet run, stays quick without a token file.
    from pathlib import Path

    from treeherd.transport.secret_files import InsecureSecret, read_secret

    try:
        return read_secret(Path(path)).decode().strip() or None
    except FileNotFoundError:
        raise CredentialError(f"{source} names the token file {path}, which does not exist") from None
    except InsecureSecret as error:
        raise CredentialError(str(error)) from None
    except (OSError, UnicodeDecodeError) as error:
        raise CredentialError(f"cannot read the token file {path}: {error}") from None


def authorization(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def tls_context(managers: Sequence[str] | str | None = None) -> ssl.SSLContext:
    """The context for https/wss to `managers`: the cluster CA of TREEHERD_CA_FILE or of the current
    context when set (a treeherd manager's certificate is issued by its cluster CA), else the system's
    trusted roots; with the user certificate of TREEHERD_CERT_FILE/TREEHERD_KEY_FILE presented when set."""
    return _with_client_certificate(_server_trust(managers))


def _server_trust(managers: Sequence[str] | str | None) -> ssl.SSLContext:
    import ssl  # here: the ENC, which reads tokens too, stays quick to start over plain http

    path = os.environ.get(CA_FILE_ENV, "").strip()
    source = CA_FILE_ENV
    if not path:
        context = _context(managers)
        if context is None or not context.ca_file:
            return ssl.create_default_context()
        path, source = context.ca_file, f"the context {context.name!r}"
    if not os.path.exists(path):
        raise CredentialError(f"{source} names the CA file {path}, which does not exist")
    try:
        return ssl.create_default_context(cafile=path)
    except (OSError, ssl.SSLError) as error:
        raise CredentialError(
            f"{source} names {path}, which is not a readable PEM certificate: {error}"
        ) from None


def _with_client_certificate(context: ssl.SSLContext) -> ssl.SSLContext:
    """Present the user certificate of TREEHERD_CERT_FILE and TREEHERD_KEY_FILE (`treeherd cert create`),
    when both are set: the manager then knows the caller by it, without a token."""
    import ssl

    cert, key = os.environ.get(CERT_FILE_ENV, "").strip(), os.environ.get(KEY_FILE_ENV, "").strip()
    if not cert and not key:
        return context
    if not (cert and key):
        raise CredentialError(f"{CERT_FILE_ENV} and {KEY_FILE_ENV} go together: set both, or neither")
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as error:
        raise CredentialError(
            f"{CERT_FILE_ENV}/{KEY_FILE_ENV} ({cert}, {key}) are not a readable certificate and key: {error}"
        ) from None
    return context


TLS_HINT = (
    f"the manager's certificate was not verified: set {CA_FILE_ENV} to its cluster CA certificate"
    " (DATA_DIR/ca.crt on the manager)"
)
