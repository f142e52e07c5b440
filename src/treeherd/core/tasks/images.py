"""Container image references: whether a text is one Docker would accept (`sha256:ID`, an ID,
`NAME[:TAG][@DIGEST]` with an optional registry host), checked before any engine is asked."""

from __future__ import annotations

import re

__all__ = ["image_reference_problem"]

_ID = re.compile(r"(?:sha256:)?[a-f0-9]{12,64}")
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*(?::[0-9]+)?"
_NAME = re.compile(
    rf"(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*"
    r"(?::[\w][\w.-]{0,127})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?"
)
MAX_NAME = 255


def image_reference_problem(reference: str) -> str | None:
    """What is wrong with an image reference, or None when it is well formed."""
    if _ID.fullmatch(reference):
        return None
    if not reference:
        return "the image reference is empty: give a local image ID (sha256:...) or NAME[:TAG]"
    first, slash, _ = reference.partition("/")
    # Only a first part with "." or ":" (or localhost) is a registry host; otherwise it is lower case.
    a_path = slash and not ("." in first or ":" in first or first == "localhost")
    if not _NAME.fullmatch(reference) or (a_path and first != first.lower()):
        return (
            f"{reference!r} is not an image reference: give a local image ID (sha256:...) or"
            " NAME[:TAG] in lower case, e.g. local/busybox:1"
        )
    if len(reference.split("@", 1)[0]) > MAX_NAME:
        return f"the image name is longer than {MAX_NAME} characters"
    return None
