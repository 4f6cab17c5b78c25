"""The OpenAI Images API, with the official ``openai`` package as the client: pointed at
Dream Forge by its base URL and an API key, it gets images, and OpenAI's own errors."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import httpx
import openai
import pytest

from dreamforge.artifacts.receipts import read_receipt
from dreamforge.config import Settings
from dreamforge.domain.access import Scope
from dreamforge.runners.fake import FakeRunner
from tests.conftest import ApiThread, LiveServer, free_port, register_tiny
from tests.test_lifecycle import FakeServer, fake  # noqa: F401 - the fixture


def test_images_come_back_as_base64_or_urls_from_an_ordinary_job(live: LiveServer) -> None:
    client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="not-needed-on-loopback")
    made = client.images.generate(
        model="tiny-sdxl", prompt="openai b64", n=2, size="64x64", response_format="b64_json"
    )
    pngs = [base64.b64decode(image.b64_json or "") for image in made.data]
    receipts = [read_receipt(png) for png in pngs]
    assert [(r.item_index, r.spec.width, r.spec.height) for r in receipts] == [
        (0, 64, 64),
        (1, 64, 64),
    ]
    assert receipts[0].spec.prompt == "openai b64" and receipts[0].model.id == "tiny-sdxl"

    # The job behind it is an ordinary one: listed, its images the same bytes.
    job = next(
        j for j in live.client.get("/v1/jobs").json()["data"] if j["spec"]["prompt"] == "openai b64"
    )
    assert job["status"] == "succeeded" and job["spec"]["count"] == 2
    listed = live.client.get(job["links"]["artifacts"]).json()["data"]
    assert [a["sha256"] for a in listed] == [hashlib.sha256(p).hexdigest() for p in pngs]

    linked = client.images.generate(prompt="openai url", size="64x64")  # the default model
    (image,) = linked.data
    assert image.url and image.b64_json is None and linked.created > 0
    fetched = httpx.get(image.url)
    assert fetched.status_code == 200 and read_receipt(fetched.content).spec.prompt == "openai url"


def test_refusals_are_openai_errors_naming_the_parameter(fake: FakeServer) -> None:  # noqa: F811
    client = openai.OpenAI(
        base_url=str(fake.client.base_url).rstrip("/") + "/v1", api_key="x", max_retries=0
    )
    with pytest.raises(openai.BadRequestError) as odd:
        client.images.generate(prompt="odd", size="100x100")  # type: ignore[arg-type]
    error = odd.value.body
    assert isinstance(error, dict) and error["param"] == "size"
    assert error["type"] == "invalid_request_error" and "multiple of 8" in error["message"]
    with pytest.raises(openai.BadRequestError) as unknown:
        client.images.generate(prompt="who?", model="sd-9")
    assert unknown.value.body["param"] == "model"  # type: ignore[index]
    assert "GET /v1/models" in unknown.value.body["message"]  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as many:
        client.images.generate(prompt="many", n=101)
    assert many.value.body["param"] == "n"  # type: ignore[index]


def test_a_key_is_needed_once_the_server_has_keys(tmp_path: Path, tiny_model_dir: Path) -> None:
    settings = Settings(data_dir=tmp_path, port=free_port())  # type: ignore[call-arg]
    register_tiny(settings.resolved_database_url, tiny_model_dir)
    with ApiThread(settings, run_worker=True, runner=FakeRunner(step_s=0.001)) as api:
        key = api.runtime.access.create("acme", frozenset(Scope)).key
        reader = api.runtime.access.create("acme", frozenset({Scope.JOBS_READ})).key
        wrong = openai.OpenAI(base_url=f"{api.url}/v1", api_key="df_bogus_key", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as refused:
            wrong.images.generate(prompt="no")
        assert refused.value.body["code"] == "invalid_api_key"  # type: ignore[index]
        read_only = openai.OpenAI(base_url=f"{api.url}/v1", api_key=reader, max_retries=0)
        with pytest.raises(openai.PermissionDeniedError):
            read_only.images.generate(prompt="no")
        client = openai.OpenAI(base_url=f"{api.url}/v1", api_key=key)
        made = client.images.generate(prompt="yes", size="64x64", response_format="b64_json")
        assert read_receipt(base64.b64decode(made.data[0].b64_json or "")).spec.prompt == "yes"
