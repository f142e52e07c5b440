"""Turns the console's templates (package data, autoescaped) into HTML responses, and serves its static
files (htmx, uPlot, the console's script and style) from the installed package."""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

import jinja2
from litestar import Response

HTML = "text/html; charset=utf-8"
STATIC_TYPES = {".js": "application/javascript", ".css": "text/css"}


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("treeherd.web", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["when"] = lambda value: value.strftime("%Y-%m-%d %H:%M:%S") if value else ""
    return env


def page(template: str, status_code: int = 200, **context: Any) -> Response[str]:
    """A whole page or a fragment (htmx swaps fragments in place)."""
    html = environment().get_template(template).render(**context)
    return Response(html, media_type=HTML, status_code=status_code, headers={"cache-control": "no-store"})


@cache
def static_file(name: str) -> tuple[bytes, str] | None:
    """A file of web/static by its name, with its media type; None if there is none."""
    if "/" in name or name.startswith(".") or not name.endswith(tuple(STATIC_TYPES)):
        return None
    item = resources.files("treeherd.web").joinpath("static", name)
    if not item.is_file():
        return None
    return item.read_bytes(), STATIC_TYPES[name[name.rindex(".") :]]
