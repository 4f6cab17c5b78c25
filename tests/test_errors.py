"""Every refusal is an RFC 9457 problem that names the field and the fix."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import LiveServer

PROBLEM = "application/problem+json"
LISTED = "/openapi.json lists the accepted fields"


def create(live: LiveServer, body: Any) -> dict[str, Any]:
    response = live.client.post("/v1/jobs", json=body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == PROBLEM
    problem: dict[str, Any] = response.json()
    assert {"type", "title", "status", "detail", "instance", "code"} <= set(problem)
    assert problem["status"] == 422 and problem["instance"] == "/v1/jobs"
    return problem


def fields(problem: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {e["field"]: e for e in problem["errors"]}


@pytest.mark.parametrize(
    ("body", "field", "fix_contains"),
    [
        ({"prompt": "x", "width": 65}, "width", "multiple of 8"),
        ({"prompt": "x", "height": 100}, "height", "multiple of 8"),
        ({"prompt": "x", "width": 32}, "width", "at least 64"),
        ({"prompt": "x", "width": 1024}, "width", "at most 512"),  # the server's max is 512
        ({"prompt": "x", "height": 1024}, "height", "at most 512"),
        ({"prompt": "x", "steps": 0}, "steps", "at least 1"),
        ({"prompt": "x", "steps": 151}, "steps", "at most 150"),
        ({"prompt": "   "}, "prompt", "non-empty"),
        ({}, "prompt", "required"),
        ({"prompt": "x", "guidance_scale": 31}, "guidance_scale", "at most 30"),
        ({"prompt": "x", "scheduler": "plms"}, "scheduler", "euler"),
        ({"prompt": "x", "seed": -1}, "seed", "at least 0"),
        ({"prompt": "x", "seed": 2**32}, "seed", "at most"),
        ({"prompt": "x", "steps": "many"}, "steps", "whole number"),
        ({"prompt": "x", "colour": "red"}, "colour", f"remove this field; {LISTED}"),  # none near
    ],
)
def test_bad_fields_are_named_with_a_fix(
    live: LiveServer, body: dict[str, Any], field: str, fix_contains: str
) -> None:
    problem = create(live, body)
    assert problem["code"] == "VALIDATION_ERROR"
    assert field in fields(problem), problem
    assert fix_contains in fields(problem)[field]["fix"]
    assert field in problem["detail"]


def test_every_bad_field_is_reported_at_once(live: LiveServer) -> None:
    problem = create(live, {"prompt": "", "width": 65, "steps": 0})
    assert set(fields(problem)) == {"prompt", "width", "steps"}


def test_an_unknown_model_is_model_not_found(live: LiveServer) -> None:
    problem = create(live, {"prompt": "x", "model_id": "no-such-model"})
    assert problem["code"] == "MODEL_NOT_FOUND"
    assert "GET /v1/models" in fields(problem)["model_id"]["fix"]


def test_a_body_that_is_not_json_is_named(live: LiveServer) -> None:
    response = live.client.post(
        "/v1/jobs", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    [error] = response.json()["errors"]
    # Not the character offset as a field's name, as FastAPI's location has it.
    assert error == {
        "field": "body",
        "message": "JSON decode error at character 1: Expecting property name enclosed in "
        "double quotes",
        "fix": "send a valid JSON body",
    }


def test_json_sent_as_a_form_is_an_unsupported_media_type_told_to_say_it_is_json(
    live: LiveServer,
) -> None:
    # What `curl -d '{...}'` sends without -H: the body is a JSON object, labelled a form.
    response = live.client.post(
        "/v1/jobs",
        content=b'{"prompt": "a lighthouse"}',
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 415
    assert response.headers["content-type"] == PROBLEM
    assert response.headers["accept-post"] == "application/json"
    problem = response.json()
    assert problem["code"] == "UNSUPPORTED_MEDIA_TYPE"
    assert problem["errors"][0]["fix"] == (
        "send it with the header Content-Type: application/json (this request said "
        "application/x-www-form-urlencoded)"
    )


@pytest.mark.parametrize(
    ("body", "field", "meant"),
    [
        ({"prompt": "x", "model": "tiny-sdxl"}, "model", "model_id"),  # other APIs' name
        ({"prompt": "x", "stepz": 3}, "stepz", "steps"),
        ({"prompt": "x", "then": [{"type": "upscale", "scal": 2}]}, "then.0.upscale.scal", "scale"),
    ],
)
def test_a_misspelt_field_is_told_the_name_it_likely_meant(
    live: LiveServer, body: dict[str, Any], field: str, meant: str
) -> None:
    fix = fields(create(live, body))[field]["fix"]
    assert fix == f"remove this field, or did you mean {meant}? {LISTED}"


def test_refused_requests_leave_no_job_behind(live: LiveServer) -> None:
    before = live.client.get("/v1/jobs", params={"limit": 100}).json()["data"]
    create(live, {"prompt": "x", "width": 65})
    create(live, {"prompt": "x", "model_id": "nope"})
    after = live.client.get("/v1/jobs", params={"limit": 100}).json()["data"]
    assert [j["id"] for j in after] == [j["id"] for j in before]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/jobs/{id}"),
        ("POST", "/v1/jobs/{id}/cancel"),
        ("GET", "/v1/jobs/{id}/progress"),
        ("GET", "/v1/jobs/{id}/progress/stream"),
        ("GET", "/v1/jobs/{id}/logs"),
        ("GET", "/v1/jobs/{id}/artifacts"),
    ],
)
def test_an_unknown_job_is_a_404_problem(live: LiveServer, method: str, path: str) -> None:
    response = live.client.request(method, path.format(id="0000-missing"))
    assert response.status_code == 404
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["code"] == "NOT_FOUND"
    assert "0000-missing" in response.json()["detail"]


def test_query_parameters_are_validated_too(live: LiveServer) -> None:
    bad_limit = live.client.get("/v1/jobs", params={"limit": 0})
    assert bad_limit.status_code == 422 and bad_limit.json()["errors"][0]["field"] == "limit"
    bad_cursor = live.client.get("/v1/jobs", params={"cursor": "garbage!"})
    assert bad_cursor.status_code == 422 and bad_cursor.json()["errors"][0]["field"] == "cursor"
    bad_status = live.client.get("/v1/jobs", params={"status": "done"})
    assert bad_status.status_code == 422 and bad_status.json()["errors"][0]["field"] == "status"


def test_unknown_routes_are_problems_too(live: LiveServer) -> None:
    for response in (live.client.get("/v1/nothing-here"), live.client.options("/v1/nothing-here")):
        assert response.status_code == 404
        assert response.headers["content-type"] == PROBLEM
        assert response.json()["detail"] == (
            "nothing is at /v1/nothing-here; /openapi.json lists the API's paths"
        )


def test_a_method_a_path_does_not_have_is_405_with_the_ones_it_has(live: LiveServer) -> None:
    response = live.client.delete("/v1/jobs")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD, OPTIONS, POST"
    problem = response.json()
    assert problem["code"] == "METHOD_NOT_ALLOWED"  # not a VALIDATION_ERROR: no field is wrong
    assert (
        problem["detail"]
        == "DELETE is not allowed on /v1/jobs; use one of GET, HEAD, OPTIONS, POST"
    )
