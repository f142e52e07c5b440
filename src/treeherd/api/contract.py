"""The OpenAPI document as the server behaves: the framework writes it from the routes and structs,
and `finish` corrects what it cannot know.

- every error answer has one body, `ApiError` (`error`, `detail`, `field`), and each operation lists
  the statuses it can answer with: 400 when it takes parameters or a body, 404 when they name
  something, 409 when it writes, and the few more some routes have (410, 413, 503);
- a union is `anyOf`: `int | float` as `oneOf` would match an integer twice and refuse it;
- a struct that refuses unknown fields says so (`additionalProperties: false`), and a tagged struct
  (a stored object) lists its tag field `kind`.

Pure over the document's dict: the app calls it once and serves the result at /openapi.json and /schema.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import msgspec

from treeherd.api.access import scope_of
from treeherd.api.routes.common import MAX_PAGE
from treeherd.core.cluster import _BOUNDS as CLUSTER_BOUNDS  # the validator's own table
from treeherd.core.edge.discovery import MAX_TTL_S, MIN_TTL_S
from treeherd.core.edge.gateway_plans import MAX_REASON
from treeherd.core.security.roles import Scope
from treeherd.core.tasks.service_checks import MAX_REPLICAS
from treeherd.core.tree.tree import MAX_DEPTH, MAX_PATH_LENGTH
from treeherd.core.tree.validate import (
    _CLASS_NAME,
    _ENVIRONMENT,
    _LABEL_KEY,
    _PARAM_NAME,
    _UPSTREAM,
    MAX_WEIGHT,
)
from treeherd.model.kinds import KINDS

ERROR_SCHEMA = "ApiError"
WRITES = ("post", "put", "patch", "delete")
_DESCRIPTIONS = {
    400: "Bad input: the detail says what is wrong and `field` names the field",
    401: "No valid credential (a manager run with --require-auth): present a token",
    403: "The credential's role may not do this",
    404: "Something the request names does not exist",
    409: "Refused: it already exists, changed meanwhile, or the change would break the tree",
    410: "The revision to resume from is no longer kept: read again from now",
    413: "The request body is larger than the manager takes",
    503: "The manager cannot answer this now (stopping, or a part it needs is not running)",
}
# Statuses beyond the general rule, by path prefix and method ("*" for every method).
_EXTRA: dict[tuple[str, str], tuple[int, ...]] = {
    ("/api/v1/events", "get"): (410, 503),
    ("/api/v1/services/", "get"): (503,),
    ("/api/v1/tasks/", "get"): (503,),
    ("/api/v1/endpoints", "*"): (503,),
    ("/api/v1/services-registry", "*"): (503,),
    ("/api/v1/join", "post"): (401, 503),
    ("/api/v1/cluster/ca", "get"): (503,),
    ("/api/v1/cluster/join-tokens", "*"): (503,),
}


# What the validators accept, as schema keywords. A pattern here must accept exactly what the
# validator does (a hostname is stripped and lower-cased before it is checked, so the pattern allows
# surrounding space and capitals): a looser one lets through requests the server refuses, a
# stricter one documents as invalid requests the server takes.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_SEGMENT = r"[a-z0-9](?:[a-z0-9_-]{0,61}[a-z0-9])?"
# Python's whitespace (what str.strip() removes and `\s` matches there), spelled out: JSON Schema's
# regular expressions are ECMAScript's, whose `\s` is another set.
_SPACE = r"[\t\n\x0b\x0c\r\x1c-\x1f \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
_NOT_SPACE = _SPACE.replace("[", "[^", 1)
HOSTNAME = {"type": "string", "pattern": rf"^{_SPACE}*{_LABEL}(?:\.{_LABEL})*\.?{_SPACE}*$", "maxLength": 253}
DOMAIN = {
    "type": "string",
    "pattern": rf"^{_SPACE}*(?:\*\.)?{_LABEL}(?:\.{_LABEL})*\.?{_SPACE}*$",
    "maxLength": 253,
}
TREE_PATH = {
    "type": "string",
    "pattern": rf"^{_SEGMENT}(?:\.{_SEGMENT}){{0,{MAX_DEPTH - 1}}}$",
    "maxLength": MAX_PATH_LENGTH,
}
SERVICE_NAME = {"type": "string", "pattern": rf"^{_SEGMENT}$"}
IP_ADDRESS = {"type": "string", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]}
PORT = {"type": "integer", "minimum": 1, "maximum": 65535}
SHARE = {"type": "number", "minimum": 0, "maximum": 1}
AT_LEAST_ONE = {"type": "integer", "minimum": 1}
NOT_NEGATIVE = {"type": "number", "minimum": 0}
CLASS_NAME = {"type": "string", "pattern": _CLASS_NAME.pattern}
PARAM_NAME = {"type": "string", "pattern": _PARAM_NAME.pattern}
ENVIRONMENT = {"type": "string", "pattern": _ENVIRONMENT.pattern}
UPSTREAM = {"type": "string", "pattern": _UPSTREAM.pattern}
GATEWAY_NAME = {"type": "string", "pattern": r"^[A-Za-z0-9_.-]{1,63}$"}
LABEL_VALUE = {
    "type": "string",
    "pattern": "^(?: |" + _SPACE.replace("[", "[^;{}'\"#\\\\\\x00-\\x1f\\x7f", 1) + ")*$",
    "maxLength": 256,
}
WEBHOOK = {"type": "string", "pattern": rf"^http://{_NOT_SPACE}*$", "maxLength": 2048}


def _labels(nullable: bool) -> dict[str, Any]:
    value = {"anyOf": [LABEL_VALUE, {"type": "null"}]} if nullable else LABEL_VALUE
    return {"type": "object", "propertyNames": {"pattern": _LABEL_KEY.pattern}, "additionalProperties": value}


def _puppet_classes(nullable: bool) -> dict[str, Any]:
    params = {"type": "object", "propertyNames": {"pattern": _PARAM_NAME.pattern}, "additionalProperties": {}}
    value = {"anyOf": [params, {"type": "null"}]} if nullable else params
    return {
        "type": "object",
        "propertyNames": {"pattern": _CLASS_NAME.pattern},
        "additionalProperties": value,
    }


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


# Whole field schemas, where the framework's cannot carry the rule (keys of a map, nullable values).
_REPLACE: dict[str, dict[str, dict[str, Any]]] = {
    "NodeCreate": {
        "labels": _labels(False),
        "puppet_classes": _puppet_classes(False),
        "puppet_exclude": {"type": "array", "items": CLASS_NAME},
        "puppet_environment": _nullable(ENVIRONMENT),
        "upstream": _nullable(UPSTREAM),
        "port": _nullable(PORT),
    },
    "NodeUpdate": {
        "labels": _labels(True),
        "puppet_classes": _puppet_classes(True),
        "puppet_exclude": {"type": "array", "items": CLASS_NAME},
        "puppet_environment": _nullable(ENVIRONMENT),
        "upstream": _nullable(UPSTREAM),
        "port": _nullable(PORT),
    },
    "MachineCreate": {"labels": _labels(False), "ips": {"type": "array", "items": IP_ADDRESS}},
    "MachineUpdate": {"labels": _labels(True), "ips": {"type": "array", "items": IP_ADDRESS}},
    "MachineReport": {"labels": _labels(False), "ips": {"type": "array", "items": IP_ADDRESS}},
    "ClusterUpdate": {  # "" clears it, as null does
        "puppet_default_class": {"anyOf": [CLASS_NAME, {"type": "string", "maxLength": 0}, {"type": "null"}]}
    },
    "PolicySet": {"webhook": _nullable(WEBHOOK)},
    "NodeMove": {"to": TREE_PATH},
    "DomainCreate": {
        "ports": {"type": "array", "items": {"$ref": "#/components/schemas/DomainPort"}, "minItems": 1}
    },
    "DomainUpdate": {
        "ports": {"type": "array", "items": {"$ref": "#/components/schemas/DomainPort"}, "minItems": 1}
    },
    "PuppetClass": {"name": CLASS_NAME, "parent": _nullable(CLASS_NAME)},
    "PuppetParam": {"name": PARAM_NAME},
}
_FIELDS: dict[str, dict[str, dict[str, Any]]] = {
    "NodeCreate": {"path": TREE_PATH},
    "MachineCreate": {"hostname": HOSTNAME, "cpus": NOT_NEGATIVE, "memory_bytes": NOT_NEGATIVE},
    "MachineUpdate": {"cpus": NOT_NEGATIVE, "memory_bytes": NOT_NEGATIVE},
    "MachineReport": {"hostname": HOSTNAME, "cpus": NOT_NEGATIVE, "memory_bytes": NOT_NEGATIVE},
    "ProvisionCreate": {"hostname": HOSTNAME},
    "DomainCreate": {"name": DOMAIN},
    "DomainPort": {"port": PORT},
    "BindRequest": {"weight": {"type": "integer", "minimum": 0, "maximum": MAX_WEIGHT}},
    "ServiceCreate": {
        "name": SERVICE_NAME,
        "replicas": {"type": "integer", "minimum": 0, "maximum": MAX_REPLICAS},
    },
    "ServiceUpdate": {"replicas": {"type": "integer", "minimum": 0, "maximum": MAX_REPLICAS}},
    "ClusterUpdate": {
        name: {"type": "number", "minimum": low, "maximum": high}
        for name, (low, high) in CLUSTER_BOUNDS.items()
    },
    "CatalogSync": {"classes": {"type": "array", "minItems": 1}},
    "GatewayEventIn": {"reason": {"type": "string", "minLength": 1, "maxLength": MAX_REASON}},
    "BackendUpdate": {"reason": {"type": "string", "maxLength": MAX_REASON}},
    "EndpointRegister": {
        "address": IP_ADDRESS,
        "port": PORT,
        "ttl_s": {"type": "number", "minimum": MIN_TTL_S, "maximum": MAX_TTL_S},
        "weight": {"type": "integer", "minimum": 0, "maximum": 256},
    },
    "PolicySet": {
        "alert_below": SHARE,
        "eject_below": SHARE,
        "eject_cap": SHARE,
        "alert_min_requests": AT_LEAST_ONE,
        "eject_min_requests": AT_LEAST_ONE,
    },
}
# Query and path parameters, by path prefix, method ("*": every one) and name.
_PARAMETERS: dict[tuple[str, str, str], dict[str, Any]] = {
    ("", "*", "limit"): {"type": "integer", "minimum": 1, "maximum": MAX_PAGE},
    ("", "*", "tail"): {"type": "integer", "minimum": 0},
    ("/api/v1/events", "*", "kind"): {"type": "string", "enum": sorted(KINDS)},
    ("/api/v1/enc/", "*", "hostname"): HOSTNAME,
    ("/api/v1/endpoints/", "*", "address"): IP_ADDRESS,
    ("/api/v1/endpoints/", "*", "port"): PORT,
    ("/api/v1/endpoints/", "post", "name"): SERVICE_NAME,  # a read of an unknown name is an empty list
    ("/api/v1/gateways/", "post", "name"): GATEWAY_NAME,
}


def finish(document: dict[str, Any], structs: Iterable[type[msgspec.Struct]]) -> dict[str, Any]:
    """A corrected copy of `document`; `structs` are the model's types, to find their options by name."""
    doc = copy.deepcopy(document)
    by_name = {cls.__name__: cls for cls in structs}
    schemas: dict[str, Any] = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas[ERROR_SCHEMA] = _error_schema()
    for name, schema in schemas.items():
        cls = by_name.get(name)
        if cls is not None:
            _struct_options(schema, cls)
        for field, keywords in _FIELDS.get(name, {}).items():
            if field in schema.get("properties", {}):
                schema["properties"][field] = _constrain(schema["properties"][field], keywords)
        for field, replacement in _REPLACE.get(name, {}).items():
            if field in schema.get("properties", {}):
                described = {
                    k: v for k, v in schema["properties"][field].items() if k in ("description", "default")
                }
                schema["properties"][field] = {**replacement, **described}
    for path, item in doc.get("paths", {}).items():
        for method, operation in item.items():
            if method in ("get", "put", "post", "patch", "delete") and isinstance(operation, dict):
                _error_responses(path, method, operation)
                for parameter in operation.get("parameters", []):
                    for (prefix, verb, name), keywords in _PARAMETERS.items():
                        if (
                            parameter.get("name") == name
                            and path.startswith(prefix)
                            and verb in ("*", method)
                        ):
                            parameter["schema"] = _constrain(parameter["schema"], keywords)
    return _any_of(doc)  # type: ignore[no-any-return]


def _error_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "title": ERROR_SCHEMA,
        "description": "The body of every error answer: a short code, what is wrong and what to do, the field.",
        "properties": {
            "error": {
                "type": "string",
                "description": "a short machine-readable code, e.g. invalid, not_found",
            },
            "detail": {"type": "string", "description": "what is wrong and what to do about it"},
            "field": {
                "anyOf": [{"type": "string"}, {"type": "null"}],
                "description": "the field it concerns",
            },
        },
        "required": ["error", "detail"],
        "additionalProperties": False,
    }


def _struct_options(schema: dict[str, Any], cls: type[msgspec.Struct]) -> None:
    config = cls.__struct_config__
    tag_field, tag = config.tag_field, config.tag
    if tag_field is not None and tag is not None and "properties" in schema:
        schema["properties"] = {tag_field: {"type": "string", "enum": [tag]}, **schema["properties"]}
        schema["required"] = sorted({*schema.get("required", []), tag_field})
    if config.forbid_unknown_fields and schema.get("type") == "object":
        schema["additionalProperties"] = False


def _constrain(schema: dict[str, Any], keywords: dict[str, Any]) -> dict[str, Any]:
    """`schema` with the keywords added where the value has their type: in each branch of a union
    (e.g. beside null, or as the items of an array of them), else to the schema itself."""
    kind = keywords.get("type")
    for union in ("oneOf", "anyOf"):
        if union in schema and all(isinstance(b, dict) for b in schema[union]):
            return {**schema, union: [_constrain(b, keywords) for b in schema[union]]}
    if schema.get("type") == "array" and kind != "array" and isinstance(schema.get("items"), dict):
        return {**schema, "items": _constrain(schema["items"], keywords)}
    if kind is None or schema.get("type") == kind or (kind == "number" and schema.get("type") == "integer"):
        extra = {k: v for k, v in keywords.items() if k != "type"}
        return {**schema, **extra}
    return schema


def _statuses(path: str, method: str, operation: dict[str, Any]) -> set[int]:
    parameters = operation.get("parameters", [])
    takes = bool(parameters) or "requestBody" in operation
    statuses: set[int] = set()
    if takes:
        statuses |= {400, 404}
    if method in WRITES:
        statuses.add(409)
    if "requestBody" in operation:
        statuses.add(413)
    scope = scope_of(method.upper(), path)
    if scope is not None and scope is not Scope.PUBLIC:
        statuses |= {401, 403}
    for (prefix, verb), extra in _EXTRA.items():
        if path.startswith(prefix) and verb in ("*", method):
            statuses.update(extra)
    return statuses


def _error_responses(path: str, method: str, operation: dict[str, Any]) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    for code in [c for c in responses if c.isdigit() and int(c) >= 400]:
        del responses[code]
    for status in sorted(_statuses(path, method, operation)):
        responses[str(status)] = {
            "description": _DESCRIPTIONS[status],
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ERROR_SCHEMA}"}}},
        }


def _any_of(node: Any) -> Any:
    """Every `oneOf` as `anyOf`: the unions here are of overlapping types (an integer is a number)."""
    if isinstance(node, dict):
        return {("anyOf" if key == "oneOf" else key): _any_of(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_any_of(value) for value in node]
    return node


def model_structs() -> list[type[msgspec.Struct]]:
    """Every struct class of the model, by walking msgspec.Struct's subclasses defined in treeherd."""
    found: list[type[msgspec.Struct]] = []
    pending: list[type[Any]] = [msgspec.Struct]
    while pending:
        cls = pending.pop()
        for sub in cls.__subclasses__():
            pending.append(sub)
            if sub.__module__.startswith("treeherd.model"):
                found.append(sub)
    return found
