"""`treeherd token create|ls|rm` and `treeherd cert create|ls|rm`: bearer tokens and user certificates
for people and scripts (administrators only).

The token's text is printed once, by `create`, to standard output alone (so `> file` keeps it and
nothing else); keep it in a 0600 file and point TREEHERD_TOKEN_FILE at it.
"""

from __future__ import annotations

from pathlib import Path

import click

from treeherd.cli.main import Context, pass_ctx
from treeherd.cli.output import FORMAT_OPTION, listing, print_json
from treeherd.cli.params_services import duration
from treeherd.model.security import (
    CertCreate,
    CertIssued,
    Role,
    TokenCreate,
    TokenCreated,
    TokenInfo,
    UserCertificate,
)
from treeherd.transport.pki import key_pem, make_csr, new_private_key
from treeherd.transport.secret_files import ensure_private_dir, write_secret

TOKENS = "/api/v1/tokens"


@click.group()
def token() -> None:
    """Bearer tokens: who may use the API, with which role."""


@token.command("create")
@click.argument("name")
@click.option(
    "--role",
    required=True,
    type=click.Choice([r.value for r in Role]),
    help="admin: everything; operator: services, tree, edge; viewer: reads; agent/gateway/enc: components",
)
@click.option(
    "--expires", metavar="DURATION", help="valid for this long (e.g. 90d, 12h); default: until removed"
)
@FORMAT_OPTION
@pass_ctx
def create(ctx: Context, name: str, role: str, expires: str | None, fmt: str) -> None:
    """Make a token and print it (the only time it is shown)."""
    seconds = None if expires is None else max(1, round(duration(expires, "--expires")))
    request = TokenCreate(name=name, role=Role(role), expires_in_s=seconds)
    made = ctx.client.request("POST", TOKENS, request, type=TokenCreated)
    if fmt == "json":
        print_json(made)
        return
    click.echo(made.token)
    until = f"until {made.expires_at:%Y-%m-%d %H:%M} UTC" if made.expires_at else "until removed"
    click.echo(f"token {made.name} ({made.role.value}) made, valid {until}: it is shown only now", err=True)


@token.command("ls")
@FORMAT_OPTION
@pass_ctx
def ls(ctx: Context, fmt: str) -> None:
    """List tokens (never their secrets)."""
    found = ctx.client.get(TOKENS, list[TokenInfo])
    listing(
        fmt,
        found,
        ["NAME", "ROLE", "CREATED", "EXPIRES"],
        lambda t: [
            t.name,
            t.role.value,
            f"{t.created_at:%Y-%m-%d %H:%M}",
            f"{t.expires_at:%Y-%m-%d %H:%M}" if t.expires_at else "-",
        ],
    )


@token.command("rm")
@click.argument("name")
@pass_ctx
def rm(ctx: Context, name: str) -> None:
    """Remove a token: it is refused from the next request on."""
    ctx.client.request("DELETE", f"{TOKENS}/{name}")
    click.echo(f"token {name} removed")


@click.group()
def cert() -> None:
    """User certificates for the API (over TLS), an alternative to tokens."""


@cert.command("create")
@click.argument("name")
@click.option(
    "--role", type=click.Choice(["admin", "operator", "viewer"]), required=True, help="what it may do"
)
@click.option(
    "--out",
    "out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="the directory for NAME.crt, NAME.key (0600) and ca.crt",
)
@pass_ctx
def cert_create(ctx: Context, name: str, role: str, out: Path) -> None:
    """Make a key here and have the cluster CA certify it for NAME with ROLE; present it with
    TREEHERD_CERT_FILE and TREEHERD_KEY_FILE."""
    key = new_private_key()
    body = CertCreate(name=name, role=Role(role), csr_pem=make_csr(key).decode())
    issued = ctx.client.request("POST", "/api/v1/certs", body, type=CertIssued)
    ensure_private_dir(out)
    write_secret(out / f"{name}.key", key_pem(key))
    write_secret(out / f"{name}.crt", issued.cert_pem.encode())
    (out / "ca.crt").write_text(issued.ca_cert_pem)
    click.echo(f"certificate for {name} ({role}) in {out / (name + '.crt')}; to use it:")
    click.echo(
        f"    export TREEHERD_CERT_FILE={out / (name + '.crt')} TREEHERD_KEY_FILE={out / (name + '.key')}"
    )


@cert.command("ls")
@FORMAT_OPTION
@pass_ctx
def cert_ls(ctx: Context, fmt: str) -> None:
    """List the user certificates issued, revoked ones included."""
    found = ctx.client.get("/api/v1/certs", list[UserCertificate])
    listing(
        fmt,
        found,
        ["NAME", "ROLE", "SERIAL", "ISSUED", "EXPIRES", "REVOKED"],
        lambda c: [
            c.name,
            c.role.value,
            c.serial[:16],
            f"{c.created_at:%Y-%m-%d %H:%M}",
            f"{c.expires_at:%Y-%m-%d %H:%M}",
            f"{c.revoked_at:%Y-%m-%d %H:%M}" if c.revoked_at else "-",
        ],
    )


@cert.command("rm")
@click.argument("name")
@pass_ctx
def cert_rm(ctx: Context, name: str) -> None:
    """Revoke every certificate of user NAME: each is refused from the next request on."""
    ctx.client.request("DELETE", f"/api/v1/certs/{name}")
    click.echo(f"the certificates of {name} are revoked")


COMMANDS = [token, cert]
