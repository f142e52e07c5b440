"""Option parsing for service commands: durations, ports, and the task spec built from options."""

from __future__ import annotations

import re

import click

from treeherd.model.services import PortSpec

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def duration(text: str, option: str) -> float:
    """Seconds from `500ms`, `5s`, `2m`, `1h` or a plain number of seconds."""
    match = _DURATION.match(text)
    if not match:
        raise click.BadParameter(f"{text!r} is not a duration such as 5s, 500ms or 2m", param_hint=option)
    return float(match.group(1)) * _UNITS[match.group(2)]


def port(text: str) -> PortSpec:
    """`NAME` (a host port is allocated) or `NAME:PORT`."""
    name, _, number = text.partition(":")
    if number and not number.isdigit():
        raise click.BadParameter(f"{text!r} is not NAME or NAME:PORT", param_hint="--port")
    return PortSpec(name=name, port=int(number) if number else None)
