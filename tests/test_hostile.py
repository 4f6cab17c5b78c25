"""Hostile and malformed requests: each is a 4xx problem naming what is wrong, never a
500, a 503 or a stream that does not end; links never come from what a client sent; and
no secret reaches a log, whatever happens."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest

from dreamforge.config import Settings
from tests.conftest import LiveServer, register_tiny
from tests.helpers import run_to_end, submit, wait_for
from tests.processes import Serve

PROBLEM = "application/problem+json"


def assert_problem(response: httpx.Response, status: int, field: str | None = None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    if field is not None:
        assert field in [e["field"] for e in response.json()["errors"]], response.json()


@pytest.mark.parametrize(
    "signature", ["é", "%C3%A9", "\u2603" * 64, "0" * 64 + "\u00ff", "", " " * 64]
)
def test_a_malformed_signature_is_forbidden(live: LiveServer, signature: str) -> None:
    url = "/v1/artifacts/jobs/x/00-generate/000.png"
    response = live.client.get(url, params={"expires": 9_999_999_999, "signature": signature})
    assert_problem(response, 403)


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/v1/jobs/abc%00def", "job_id"),
        ("/v1/jobs/%00/logs", "job_id"),
        ("/v1/jobs/%00/progress/stream", "job_id"),
        ("/v1/jobs/" + "a" * 200, "job_id"),
        ("/v1/models/tiny%00sdxl", "model_id"),
        ("/v1/artifacts/jobs/a%00b/00-generate/000.png?expires=1&signature=x", "key"),
    ],
)
def test_a_nul_byte_or_an_overlong_id_in_a_path_is_a_422(
    live: LiveServer, path: str, field: str
) -> None:
    assert_problem(live.client.get(path), 422, field)


def test_a_nul_byte_in_a_model_id_is_a_422(live: LiveServer) -> None:
    response = live.client.post("/v1/jobs", json={"prompt": "x", "model_id": "tiny\u0000sdxl"})
    assert_problem(response, 422, "model_id")


def test_positions_past_any_event_are_422s_not_outages(live: LiveServer) -> None:
    job, _ = run_to_end(live.client)
    stream = job["links"]["stream"]
    huge = str(2**63)
    assert_problem(live.client.get(stream, headers={"Last-Event-ID": huge}), 422, "Last-Event-ID")
    assert_problem(live.client.get(stream, params={"after": huge}), 422, "after")
    assert_problem(live.client.get(job["links"]["logs"], params={"since": huge}), 422, "since")
    # Within the range, but past the job's last event: nothing to wait for, ever.
    past = str(live.client.get(job["links"]["logs"]).text.count("\n") + 100)
    assert_problem(live.client.get(stream, headers={"Last-Event-ID": past}), 422, "Last-Event-ID")


def test_links_come_from_configuration_not_from_the_host_header(live: LiveServer) -> None:
    response = live.client.post("/v1/jobs", json={"prompt": "x"}, headers={"Host": "evil.example"})
    assert response.status_code == 202
    job = response.json()
    assert response.headers["location"].startswith(f"{live.url}/v1/jobs/")
    assert all(link.startswith(live.url) for link in job["links"].values())
    wait_for(live.client, job["id"], {"succeeded"})
    listed = live.client.get(
        job["links"]["artifacts"], headers={"Host": "evil.example", "X-Forwarded-Host": "evil"}
    )
    assert "evil" not in listed.text
    for path in (f"/v1/jobs/{job['id']}", "/v1/jobs"):
        assert "evil" not in live.client.get(path, headers={"Host": "evil.example"}).text


@pytest.mark.slow
def test_no_secret_reaches_the_log_even_from_an_internal_error(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    data = tmp_path / "data"
    register_tiny(f"sqlite:///{(data / 'dreamforge.db').resolve()}", tiny_model_dir)
    settings = Settings(  # type: ignore[call-arg]
        data_dir=data,
        signing_key="signing-key-that-must-never-be-logged",
        s3_secret_access_key="s3-secret-that-must-never-be-logged",
    )
    server = Serve(data, tmp_path / "serve.log", settings=settings)
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            job = submit(client, seed=5)
            wait_for(client, job["id"], {"succeeded"})
            listed = client.get(job["links"]["artifacts"]).json()["data"][0]
            # Tamper with the store under the server: the image becomes a link out of it,
            # which the storage refuses to follow. A real internal error.
            png = data / "artifacts" / listed["key"]
            png.unlink()
            png.symlink_to("/etc/hostname")
            failed = client.get(listed["url"])
            assert failed.status_code == 500 and failed.json()["code"] == "INTERNAL_ERROR"
            assert "Traceback" not in failed.text and "signing-key" not in failed.text
    finally:
        server.stop(signal.SIGTERM)  # checks the log for every secret of its settings
    log = server.log.read_text()
    assert "Traceback" in log and "api.unexpected_error" in log  # the error was logged


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/models"])
def test_a_body_that_is_not_even_text_is_a_422(live: LiveServer, path: str) -> None:
    response = live.client.post(
        path, content=b"i\x0f\xd8\x9ey\xff", headers={"content-type": "application/json"}
    )
    assert_problem(response, 422, "body")


def test_options_and_405s_list_every_method_of_a_path(live: LiveServer) -> None:
    for path, methods in [
        ("/v1/models", "GET, HEAD, OPTIONS, POST"),
        ("/v1/jobs", "GET, HEAD, OPTIONS, POST"),
        (f"/v1/jobs/{'0' * 8}/cancel", "OPTIONS, POST"),
    ]:
        response = live.client.options(path)
        assert response.status_code == 204 and response.headers["allow"] == methods, path
        refused = live.client.delete(path)
        assert refused.status_code == 405 and refused.headers["allow"] == methods, path
        assert refused.headers["content-type"] == PROBLEM
    assert_problem(live.client.options("/nowhere"), 404)


def test_the_document_states_this_servers_limits(live: LiveServer) -> None:
    spec = live.client.get("/openapi.json").json()
    fields = spec["components"]["schemas"]["JobRequest"]["properties"]
    maxima = {
        name: [v.get("maximum") for v in fields[name]["anyOf"] if v.get("type") == "integer"]
        for name in ("width", "height", "steps")
    }
    settings = live.runtime.settings
    assert maxima == {
        "width": [settings.max_width],
        "height": [settings.max_height],
        "steps": [settings.max_steps],
    }
    too_wide = live.client.post("/v1/jobs", json={"prompt": "x", "width": settings.max_width + 8})
    assert too_wide.status_code == 422  # and the server holds to what it says
