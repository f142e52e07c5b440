"""The OpenAPI document and the server agree (api/contract.py): one error body, the statuses each
operation answers, unions as anyOf, unknown fields refused in the schema as in the server, the
validators' patterns, `Allow` on 405 and OPTIONS, and Redoc's script from the package."""

from __future__ import annotations

import json
import re
from typing import Any

from litestar.testing import AsyncTestClient

Client = AsyncTestClient  # type: ignore[type-arg]


async def _document(client: Client) -> dict[str, Any]:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    return dict(response.json())


async def test_every_error_answer_is_documented_with_the_body_the_server_sends(client: Client) -> None:
    document = await _document(client)
    schemas = document["components"]["schemas"]
    assert set(schemas["ApiError"]["properties"]) == {"error", "detail", "field"}
    text = json.dumps(document)
    assert "status_code" not in text and '"oneOf"' not in text
    machine = document["paths"]["/api/v1/machines/{hostname}"]
    assert set(machine["get"]["responses"]) == {"200", "400", "401", "403", "404"}
    assert set(document["paths"]["/healthz"]["get"]["responses"]) == {"200"}  # public: never 401
    assert set(machine["patch"]["responses"]) >= {"200", "400", "404", "409", "413"}
    assert machine["get"]["responses"]["404"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ApiError"
    }
    assert set(document["paths"]["/api/v1/events"]["get"]["responses"]) >= {"410", "503"}
    # And the server answers a 404 with exactly that body.
    missing = await client.get("/api/v1/machines/nosuch")
    assert missing.status_code == 404 and set(missing.json()) == {"error", "detail", "field"}


async def test_the_schemas_say_what_the_validators_take(client: Client) -> None:
    schemas = (await _document(client))["components"]["schemas"]
    assert schemas["MachineCreate"]["additionalProperties"] is False  # unknown fields are refused
    assert schemas["Machine"]["properties"]["kind"]["const"] == "machine"
    hostname = re.compile(schemas["MachineCreate"]["properties"]["hostname"]["pattern"])
    assert hostname.fullmatch("web-1.example.com") and hostname.fullmatch(" Web-1 ")
    assert not hostname.fullmatch("web_1") and not hostname.fullmatch("")
    path = re.compile(schemas["NodeCreate"]["properties"]["path"]["pattern"])
    assert path.fullmatch("corp.web.api") and not path.fullmatch("corp..web")
    port = schemas["DomainPort"]["properties"]["port"]
    assert (port["minimum"], port["maximum"]) == (1, 65535)
    figures = schemas["GatewayEvent"]["properties"]["figures"]["additionalProperties"]
    assert [b["type"] for b in figures["anyOf"]] == ["integer", "number", "string"]


async def test_an_integral_number_is_an_integer_as_json_schema_has_it(client: Client) -> None:
    created = await client.post("/api/v1/nodes", json={"path": "corp", "port": 8080.0})
    assert created.status_code == 201 and created.json()["port"] == 8080
    refused = await client.post("/api/v1/nodes", json={"path": "corp2", "port": 8080.5})
    assert refused.status_code == 400 and refused.json()["field"] == "port"
    assert (await client.post("/api/v1/nodes", json={"path": "corp3", "port": "80"})).status_code == 400


async def test_405_and_options_list_every_method_of_the_path(client: Client) -> None:
    options = await client.options("/api/v1/nodes/corp")
    assert options.status_code == 204 and options.headers["allow"] == "DELETE, GET, OPTIONS, PATCH"
    trace = await client.request("TRACE", "/api/v1/nodes/corp")
    assert trace.status_code == 405
    assert set(trace.headers["allow"].split(", ")) == {"DELETE", "GET", "OPTIONS", "PATCH"}
    assert trace.json()["error"] == "method_not_allowed" and "GET" in trace.json()["detail"]


async def test_redoc_loads_its_script_from_the_package(client: Client) -> None:
    page = await client.get("/schema")
    assert page.status_code == 200
    assert '<script src="/schema/redoc.standalone.js"' in page.text
    assert "cdn" not in page.text.lower() and "googleapis" not in page.text
    assert '"ApiError"' in page.text  # the corrected document, not the framework's
    script = await client.get("/schema/redoc.standalone.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("application/javascript")
    assert script.content.startswith(
        b"/*! For license information please see redoc.standalone.js.LICENSE.txt */"
    )
    assert len(script.content) > 500_000
