"""`treeherd events`: follow the change stream, resuming across disconnects."""

from __future__ import annotations

import time

import click
import msgspec

from treeherd.cli.main import Context, pass_ctx
from treeherd.model.events import Event
from treeherd.model.kinds import KINDS
from treeherd.transport.client import Client, ClientError

RECONNECT_SECONDS = 1.0
STALL_SECONDS = 60.0  # the manager sends a keepalive every 15 s
_decode = msgspec.json.Decoder(Event).decode


def _name(event: Event) -> str:
    obj = event.object
    # A gateway says what it did ("reload: ..."), a service where its update stands.
    summary = getattr(obj, "summary", None)
    text = summary() if callable(summary) else ""
    note = f"  {text}" if text else ""
    for attr in ("path", "hostname", "name"):
        value = getattr(obj, attr, None)
        if isinstance(value, str):
            return value + note
    return obj.id + note


@click.command("events")
@click.option("--since", type=int, help="start after this revision (default: from now)")
@click.option("--kind", "kinds", multiple=True, type=click.Choice(sorted(KINDS)), help="only these kinds")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--count", type=int, help="exit after this many events")
@pass_ctx
def events(ctx: Context, since: int | None, kinds: tuple[str, ...], fmt: str, count: int | None) -> None:
    """Follow changes to every object as they are committed."""
    seen = 0
    last = since
    if fmt == "table":
        click.echo(f"{'REVISION':<10}{'EVENT':<9}{'KIND':<16}NAME")
    while True:
        client = Client(ctx.manager)
        try:
            stream = client.stream(
                "/api/v1/events", {"since": last, "kind": list(kinds)}, read_timeout=STALL_SECONDS
            )
            for kind, data, event_id in stream:
                if event_id is not None:
                    last = int(event_id)
                if kind == "error":
                    raise ClientError(msgspec.json.decode(data).get("detail", data))
                if kind not in ("created", "updated", "deleted"):
                    continue
                if fmt == "json":
                    click.echo(data)
                else:
                    event = _decode(data)
                    click.echo(f"{event.revision:<10}{event.type:<9}{event.object.kind:<16}{_name(event)}")
                seen += 1
                if count is not None and seen >= count:
                    return
        except ClientError as error:
            if error.status is not None:
                raise
            click.echo(f"warning: {error}; reconnecting", err=True)
        finally:
            client.close()
        time.sleep(RECONNECT_SECONDS)


COMMANDS = [events]
