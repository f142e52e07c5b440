"""Field validators: each returns the normalised value or raises InvalidInput saying what to fix.

Values end up in generated nginx, haproxy and Puppet files, so anything that could break out of a
directive (whitespace, `;`, braces, quotes, `#`) is refused here, at the edge. Label values are the one
exception for plain spaces: they are data, never written into a directive unquoted.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping

from treeherd.model.errors import InvalidInput
from treeherd.model.objects import ParamValue

MAX_WEIGHT = 256  # haproxy's runtime weights go up to 256; nginx accepts any positive weight
_HOSTNAME_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_LABEL_KEY = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._/-]{0,126}[A-Za-z0-9])?$")
_CLASS_NAME = re.compile(r"^[a-z][a-z0-9_]*(?:::[a-z][a-z0-9_]*)*$")
_PARAM_NAME = re.compile(r"^[a-z_][A-Za-z0-9_]*$")
_ENVIRONMENT = re.compile(r"^[a-z0-9_]{1,64}$")
_UPSTREAM = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_UNSAFE = re.compile(r"[\s;{}'\"#\\]|[\x00-\x1f\x7f]")


def hostname(value: str, *, field: str = "hostname") -> str:
    """A DNS host name (RFC 1123), lower-cased."""
    name = value.strip().lower().rstrip(".")
    if not name or len(name) > 253 or not all(_HOSTNAME_LABEL.fullmatch(part) for part in name.split(".")):
        raise InvalidInput(
            f"invalid hostname {value!r}: use letters, digits and '-' in dot-separated labels of 1-63 characters",
            field=field,
        )
    return name


def domain_name(value: str, *, field: str = "name") -> str:
    """A domain name for nginx's server_name; a leading `*.` wildcard is allowed."""
    name = value.strip().lower()
    bare = name[2:] if name.startswith("*.") else name
    try:
        return ("*." if bare != name else "") + hostname(bare, field=field)
    except InvalidInput:
        raise InvalidInput(
            f"invalid domain {value!r}: use a DNS name such as shop.example.com (optionally *.example.com)",
            field=field,
        ) from None


def ip_list(values: list[str], *, field: str = "ips") -> list[str]:
    """IPv4/IPv6 addresses in their canonical form, duplicates removed, order kept."""
    found: list[str] = []
    for value in values:
        try:
            address = str(ipaddress.ip_address(value.strip()))
        except ValueError:
            raise InvalidInput(f"invalid IP address {value!r}", field=field) from None
        if address not in found:
            found.append(address)
    return found


def labels(values: Mapping[str, str | None], *, field: str = "labels") -> None:
    """Label keys like `tier` or `team.io/owner`; values up to 256 printable characters."""
    for key, value in values.items():
        if not _LABEL_KEY.fullmatch(key):
            raise InvalidInput(
                f"invalid label key {key!r}: 1-128 letters, digits, '.', '_', '/' or '-', starting and ending"
                " with a letter or digit",
                field=field,
            )
        if value is not None and (len(value) > 256 or _UNSAFE.search(value.replace(" ", ""))):
            raise InvalidInput(
                f"invalid value for label {key!r}: at most 256 characters, no quotes, ';', braces or control"
                " characters",
                field=field,
            )


def puppet_class(
    name: str, params: Mapping[str, ParamValue] | None, *, field: str = "puppet_classes"
) -> None:
    """A Puppet class name (`profile::web`) and its parameter names."""
    if not _CLASS_NAME.fullmatch(name):
        raise InvalidInput(
            f"invalid Puppet class name {name!r}: lower-case words joined by '::', e.g. profile::web",
            field=field,
        )
    for param in params or {}:
        if not _PARAM_NAME.fullmatch(param):
            raise InvalidInput(f"invalid parameter name {param!r} for class {name}", field=field)


def puppet_environment(value: str | None, *, field: str = "puppet_environment") -> None:
    if value is not None and not _ENVIRONMENT.fullmatch(value):
        raise InvalidInput(
            f"invalid Puppet environment {value!r}: 1-64 lower-case letters, digits or '_'", field=field
        )


def upstream(value: str | None, *, field: str = "upstream") -> None:
    if value is not None and not _UPSTREAM.fullmatch(value):
        raise InvalidInput(
            f"invalid upstream name {value!r}: letters, digits, '_', '.', '-' (at most 128)", field=field
        )


def port(value: int | None, *, field: str = "port") -> None:
    if value is not None and not 1 <= value <= 65535:
        raise InvalidInput(f"port {value} is out of range: use 1-65535", field=field)


def weight(value: int, *, field: str = "weight") -> None:
    if not 0 <= value <= MAX_WEIGHT:
        raise InvalidInput(
            f"weight {value} is out of range: use 0-{MAX_WEIGHT} (0 keeps the machine bound but sends it no traffic)",
            field=field,
        )


def uri(value: str, *, field: str = "uri") -> str:
    """A location prefix: starts with '/', no spaces or characters that end an nginx directive."""
    if not value.startswith("/") or len(value) > 1024 or _UNSAFE.search(value):
        raise InvalidInput(
            f"invalid uri {value!r}: a path prefix starting with '/' (at most 1024 characters, no spaces,"
            " quotes, ';', '#' or braces)",
            field=field,
        )
    return value


def file_path(value: str, *, field: str) -> str:
    """A path written into generated configuration files."""
    if not value or len(value) > 4096 or _UNSAFE.search(value):
        raise InvalidInput(
            f"invalid path {value!r} for {field}: non-empty, no spaces, quotes, ';', '#' or braces",
            field=field,
        )
    return value


def non_negative(value: float, *, field: str) -> None:
    if value < 0:
        raise InvalidInput(f"{field} must not be negative (got {value})", field=field)
