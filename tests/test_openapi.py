"""The OpenAPI document: every request and response comes with an example."""

from __future__ import annotations

from typing import Any

from tests.conftest import LiveServer
from tests.helpers import wait_for


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = spec["components"]["schemas"][name]
    return schema


def _has_example(spec: dict[str, Any], media: dict[str, Any]) -> bool:
    if media.get("example") is not None or media.get("examples"):
        return True
    return bool(_resolve(spec, media.get("schema", {})).get("examples"))


def test_every_operation_documents_examples(live: LiveServer) -> None:
    spec = live.client.get("/openapi.json").json()
    missing = []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            body = operation.get("requestBody")
            if body and not all(_has_example(spec, m) for m in body["content"].values()):
                missing.append(f"{method.upper()} {path} request")
            for status, response in operation["responses"].items():
                contents = response.get("content", {})
                if not contents or not all(_has_example(spec, m) for m in contents.values()):
                    missing.append(f"{method.upper()} {path} {status}")
    assert missing == []


def test_the_job_request_has_named_examples(live: LiveServer) -> None:
    spec = live.client.get("/openapi.json").json()
    body = spec["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]
    assert set(body["examples"]) == {"minimal", "full"}
    minimal = live.client.post("/v1/jobs", json=body["examples"]["minimal"]["value"])
    assert minimal.status_code == 202, minimal.text
    wait_for(live.client, minimal.json()["id"], {"succeeded"})
    # The full example asks for 1024 px; this server caps sizes at 512, and says so.
    full = live.client.post("/v1/jobs", json=body["examples"]["full"]["value"])
    assert full.status_code == 422
    assert {e["field"] for e in full.json()["errors"]} == {"width", "height"}
    shrunk = {**body["examples"]["full"]["value"], "width": 64, "height": 64, "steps": 2}
    accepted = live.client.post("/v1/jobs", json=shrunk)
    assert accepted.status_code == 202, accepted.text
    wait_for(live.client, accepted.json()["id"], {"succeeded"})
