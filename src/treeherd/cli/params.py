"""Parsers for the CLI's compact option syntax: KEY=VALUE, CLASS:k=v,..., PORT[:ssl], 8G."""

from __future__ import annotations

import re
from typing import Any

import click
import msgspec

from treeherd.model.objects import DomainPort

_CLASS_SPEC = re.compile(r"^((?:[^:]|::)+)(?::(.*))?$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)\s*$", re.IGNORECASE)


def key_value(text: str, option: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise click.BadParameter(f"{text!r} is not KEY=VALUE", param_hint=option)
    return key, value


def key_values(items: tuple[str, ...], option: str) -> dict[str, str]:
    return dict(key_value(item, option) for item in items)


def scalar(text: str) -> Any:
    """A parameter value: JSON when it parses (4, true, [1,2]), else the text itself."""
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError:
        return text


def puppet_class(text: str) -> tuple[str, dict[str, Any]]:
    """`NAME` or `NAME:k=v,k2=v2` (class names contain '::')."""
    match = _CLASS_SPEC.match(text)
    if not match:
        raise click.BadParameter(f"{text!r} is not NAME[:k=v,...]", param_hint="--puppet-class")
    name, rest = match.group(1), match.group(2)
    params: dict[str, Any] = {}
    if rest:
        for item in rest.split(","):
            key, value = key_value(item, "--puppet-class")
            params[key] = scalar(value)
    return name, params


def domain_port(text: str) -> DomainPort:
    """`80` or `443:ssl`."""
    number, _, flag = text.partition(":")
    if not number.isdigit() or flag not in ("", "ssl"):
        raise click.BadParameter(f"{text!r} is not PORT or PORT:ssl", param_hint="--port")
    return DomainPort(port=int(number), ssl=flag == "ssl")


def size(text: str, option: str = "--memory") -> int:
    """Bytes from `8G`, `512MiB`, `1.5g` or a plain number (powers of 1024)."""
    match = _SIZE.match(text)
    if not match:
        raise click.BadParameter(f"{text!r} is not a size such as 8G or 512M", param_hint=option)
    number, unit = float(match.group(1)), match.group(2).lower()
    return int(number * 1024 ** "_kmgtp".index(unit or "_"))
