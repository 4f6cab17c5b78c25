"""The OpenAPI document: every request and response comes with an example."""

from __future__ import annotations

from typing import Any

from tests.conftest import LiveServer


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
    for example in body["examples"].values():
        response = live.client.post("/v1/jobs", json=example["value"])
        assert response.status_code in (202, 422)
        if response.status_code == 422:  # the full example asks for 1024px; this server caps 512
            assert response.json()["errors"][0]["field"] in {"width", "height"}
