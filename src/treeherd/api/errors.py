"""Turns every failure into an `ApiError` body with the right status; nothing leaks a stack trace.

Validation failures from request decoding keep the name of the offending field: msgspec reports it
either as the error's key or, for unknown fields, inside the message.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from treeherd.model.errors import InvalidInput, TreeherdError
from treeherd.model.views import ApiError

log = logging.getLogger(__name__)
_UNKNOWN_FIELD = re.compile(r"unknown field `([^`]+)`")


class InvalidJson(InvalidInput):
    code = "invalid_json"


_STATUS_CODES = {
    400: "invalid",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


def _answer(status: int, body: ApiError, headers: dict[str, str] | None = None) -> Response[ApiError]:
    return Response(content=body, status_code=status, headers=headers)


def treeherd_error(_: Request[Any, Any, Any], exc: TreeherdError) -> Response[ApiError]:
    return _answer(exc.status, ApiError(error=exc.code, detail=exc.detail, field=exc.field))


def validation_error(request: Request[Any, Any, Any], exc: ValidationException) -> Response[ApiError]:
    problems = exc.extra if isinstance(exc.extra, list) else []
    if not problems:
        return _answer(400, ApiError(error="invalid", detail=str(exc.detail)))
    first = problems[0] if isinstance(problems[0], dict) else {"message": str(problems[0])}
    message = str(first.get("message", exc.detail))
    key = first.get("key")
    source = getattr(first.get("source"), "value", first.get("source"))
    unknown = _UNKNOWN_FIELD.search(message)
    if unknown:
        field: str | None = unknown.group(1)
        detail = f"unknown field {field!r}: remove it (see /openapi.json for the fields this request takes)"
    else:
        field = None if key in (None, "data") else str(key).replace("[...]", "")
        where = (
            f" in {source} parameter {field!r}"
            if source in ("query", "path", "header")
            else (f" for field {field!r}" if field else "")
        )
        detail = f"{message}{where}"
    return _answer(400, ApiError(error="invalid", detail=detail, field=field))


def http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[ApiError]:
    status = exc.status_code
    detail = str(exc.detail)
    if "JSON is malformed" in detail or "Malformed" in detail:
        return _answer(
            400, ApiError(error="invalid_json", detail=f"the request body is not valid JSON ({detail})")
        )
    if status == 404 and detail in ("Not Found", ""):
        detail = f"no such endpoint: {request.method} {request.url.path} (see /openapi.json)"
    code = _STATUS_CODES.get(status, "error" if status < 500 else "internal")
    headers = dict(exc.headers or {})
    if status == 405 and "allow" in headers:  # RFC 9110: a 405 lists the methods the resource has
        detail = f"{request.method} is not allowed on {request.url.path}: it takes {headers['allow']}"
    return _answer(status, ApiError(error=code, detail=detail), headers or None)


def internal_error(request: Request[Any, Any, Any], exc: Exception) -> Response[ApiError]:
    log.exception("unhandled error answering %s %s", request.method, request.url.path)
    return _answer(
        500,
        ApiError(
            error="internal", detail=f"internal error ({type(exc).__name__}); the manager log has the details"
        ),
    )


_AT_PATH = re.compile(r" - at `\$\.?([^`]*)`$")
_MISSING_FIELD = re.compile(r"missing required field `([^`]+)`")


def body_error(error: msgspec.ValidationError | msgspec.DecodeError) -> TreeherdError:
    """A strict decoding failure of a JSON body, naming the field as a dotted path."""
    message = str(error)
    if isinstance(error, msgspec.DecodeError) and not isinstance(error, msgspec.ValidationError):
        return InvalidJson(f"the request body is not valid JSON ({message})")
    field: str | None = None
    if found := _AT_PATH.search(message):
        field = found.group(1).replace("[...]", "") or None
        message = message[: found.start()]
    if found := _UNKNOWN_FIELD.search(message):
        name = found.group(1)
        field = f"{field}.{name}" if field else name
        return InvalidInput(
            f"unknown field {field!r}: remove it (see /openapi.json for the fields this request takes)",
            field=field,
        )
    if found := _MISSING_FIELD.search(message):
        name = found.group(1)
        field = f"{field}.{name}" if field else name
        return InvalidInput(f"the field {field!r} is required", field=field)
    return InvalidInput(f"{message} for field {field!r}" if field else message, field=field)


async def decode_body_strictly(request: Request[Any, Any, Any]) -> None:
    """Before a handler that takes a JSON body runs, decode the body strictly against its type.

    The framework converts request data leniently (query strings arrive as text), which would accept
    `"80"` for a port; a JSON body must have the declared types. Raising here answers 400 with the field.
    """
    if request.method not in ("POST", "PATCH", "PUT"):
        return
    parameter = request.route_handler.parsed_fn_signature.parameters.get("data")
    if parameter is None:
        return
    body = await request.body()
    try:
        value = _integral_floats_as_ints(msgspec.json.decode(body or b"null"))
        msgspec.convert(value, type=parameter.annotation, strict=True)
    except (msgspec.ValidationError, msgspec.DecodeError) as error:
        raise body_error(error) from None


def _integral_floats_as_ints(value: Any) -> Any:
    """JSON has one number type: `80.0` is the integer 80 (as JSON Schema has it), `80.5` is not."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return int(value)
    if isinstance(value, list):
        return [_integral_floats_as_ints(item) for item in value]
    if isinstance(value, dict):
        return {key: _integral_floats_as_ints(item) for key, item in value.items()}
    return value


HANDLERS = {
    TreeherdError: treeherd_error,
    ValidationException: validation_error,
    HTTPException: http_error,
    Exception: internal_error,
}
