"""Artifact URLs are signed and expire; anything else is refused with 403."""

from __future__ import annotations

from urllib.parse import parse_qs, urlencode, urlparse

import httpx
import pytest

from tests.conftest import LiveServer
from tests.helpers import run_to_end


@pytest.fixture(scope="module")
def artifact(live: LiveServer) -> dict[str, str]:
    job, _ = run_to_end(live.client)
    data: dict[str, str] = live.client.get(job["links"]["artifacts"]).json()["data"][0]
    return data


def _with(url: str, **changes: str | int) -> str:
    parsed = urlparse(url)
    query = {k: v[0] for k, v in parse_qs(parsed.query).items()} | changes
    return parsed._replace(query=urlencode(query)).geturl()


def test_the_signed_url_works(artifact: dict[str, str]) -> None:
    assert httpx.get(artifact["url"]).status_code == 200


@pytest.mark.parametrize(
    "tamper",
    [
        lambda url: _with(url, signature="0" * 64),
        lambda url: _with(url, expires=int(parse_qs(urlparse(url).query)["expires"][0]) + 60),
        lambda url: url.replace("000.png", "001.png"),
    ],
    ids=["signature", "expiry", "key"],
)
def test_a_tampered_url_is_forbidden(artifact: dict[str, str], tamper: object) -> None:
    response = httpx.get(tamper(artifact["url"]))  # type: ignore[operator]
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "FORBIDDEN"


def test_an_expired_url_is_forbidden(live: LiveServer, artifact: dict[str, str]) -> None:
    expired = live.runtime.storage.url(artifact["key"], -1, live.url)
    response = httpx.get(expired)
    assert response.status_code == 403
    assert "expired" in response.json()["detail"]


def test_a_url_without_a_signature_names_what_is_missing(artifact: dict[str, str]) -> None:
    bare = artifact["url"].split("?")[0]
    response = httpx.get(bare)
    assert response.status_code == 422
    assert {e["field"] for e in response.json()["errors"]} == {"expires", "signature"}
