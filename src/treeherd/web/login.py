"""Signing in to the console on a manager that requires authentication: the operator pastes an API
token (as `treeherd token create` prints it); once the store says it is valid, it is kept in an HttpOnly,
SameSite=Strict cookie that the API's guard accepts as it accepts `Authorization: Bearer`. Pages asked
for without a valid token lead here; a role that may not do something is told so beside the form."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, get, post
from litestar.datastructures import Cookie
from litestar.response import Redirect

from treeherd.api.auth import TOKEN_COOKIE
from treeherd.core.security.api_tokens import check_token
from treeherd.manager.inventory import Inventory
from treeherd.model.errors import Forbidden, Unauthenticated
from treeherd.web.render import HTML, page

COOKIE_SECONDS = 12 * 3600


def to_login(request: Request[Any, Any, Any], _: Exception) -> Response[Any]:
    """A page asked for without a valid token: to the login page (htmx follows `HX-Redirect`)."""
    if request.headers.get("hx-request"):
        return Response("", status_code=401, headers={"HX-Redirect": "/ui/login"})
    return Redirect("/ui/login")


def refused_here(_: Request[Any, Any, Any], error: Exception) -> Response[str]:
    """A role that may not act: the reason, inserted after the form that asked."""
    detail = error.detail if isinstance(error, Forbidden) else str(error)
    html = page("refused.html", detail=detail).content
    return Response(html, media_type=HTML, status_code=200, headers={"HX-Reswap": "afterend"})


class ConsoleLogin(Controller):
    path = "/ui"
    include_in_schema = False

    @get("/login", sync_to_thread=False)
    def login_form(self) -> Response[str]:
        return page("login.html", title="Sign in", nav=(), section="", error=None)

    @post("/login", status_code=200)
    async def login(self, request: Request[Any, Any, Any], inventory: Inventory) -> Response[Any]:
        form = await request.form()
        presented = str(form.get("token", "")).strip()
        try:
            check_token(inventory.view, presented, inventory.clock())
        except Unauthenticated:
            return page(
                "login.html",
                401,
                title="Sign in",
                nav=(),
                section="",
                error="this token is not valid: it may be mistyped, expired or revoked (treeherd token ls)",
            )
        secure = request.url.scheme == "https"
        cookie = Cookie(
            key=TOKEN_COOKIE,
            value=presented,
            path="/",
            httponly=True,
            samesite="strict",
            secure=secure,
            max_age=COOKIE_SECONDS,
        )
        return Redirect("/ui/tree", cookies=[cookie])

    @post("/logout", status_code=200, sync_to_thread=False)
    def logout(self) -> Response[Any]:
        return Redirect("/ui/login", cookies=[Cookie(key=TOKEN_COOKIE, value="", path="/", max_age=0)])
