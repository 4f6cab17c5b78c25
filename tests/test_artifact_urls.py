"""Artifact URLs are signed and expire; anything else is refused with 403.

In the embedded profile the API signs and serves them and refuses with a problem document;
in the distributed one they are S3 presigned URLs and S3 itself refuses.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlencode, urlparse

import httpx
import pytest

from dreamforge.artifacts.storage import ObjectMissing
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


def test_a_listing_says_when_its_urls_expire(live: LiveServer) -> None:
    job, _ = run_to_end(live.client)
    before = datetime.now(UTC)
    listed = live.client.get(job["links"]["artifacts"]).json()["data"][0]
    expires_at = datetime.fromisoformat(listed["url_expires_at"])
    ttl = timedelta(seconds=live.runtime.settings.artifact_url_ttl_s)
    assert before + ttl - timedelta(seconds=5) <= expires_at <= datetime.now(UTC) + ttl


def _tampered(url: str, part: str) -> str:
    query = {k: v[0] for k, v in parse_qs(urlparse(url).query).items()}
    s3 = "X-Amz-Signature" in query  # a presigned S3 URL names its parts differently
    if part == "signature":
        return _with(url, **{"X-Amz-Signature" if s3 else "signature": "0" * 64})
    if part == "expiry":
        name = "X-Amz-Expires" if s3 else "expires"
        return _with(url, **{name: int(query[name]) + 60})
    return url.replace("000.png", "001.png")


@pytest.mark.parametrize("part", ["signature", "expiry", "key"])
def test_a_tampered_url_is_forbidden(live: LiveServer, artifact: dict[str, str], part: str) -> None:
    response = httpx.get(_tampered(artifact["url"], part))
    assert response.status_code == 403
    if live.profile == "embedded":
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == "FORBIDDEN"


def test_an_expired_url_is_forbidden(live: LiveServer, artifact: dict[str, str]) -> None:
    short_lived = live.runtime.storage.url(artifact["key"], 2, live.url)
    assert httpx.get(short_lived).status_code == 200
    time.sleep(3.1)
    response = httpx.get(short_lived)
    assert response.status_code == 403
    if live.profile == "embedded":
        assert "expired" in response.json()["detail"]


def test_a_url_without_a_signature_is_refused(live: LiveServer, artifact: dict[str, str]) -> None:
    bare = artifact["url"].split("?")[0]
    response = httpx.get(bare)
    if live.profile == "embedded":
        assert response.status_code == 422
        assert {e["field"] for e in response.json()["errors"]} == {"expires", "signature"}
    else:
        assert response.status_code == 403


def test_an_image_gone_from_the_store_is_a_404(live: LiveServer) -> None:
    """The database still lists it; the object is gone (deleted by hand, a lost bucket)."""
    job, _ = run_to_end(live.client)
    listed = live.client.get(job["links"]["artifacts"]).json()["data"][0]
    storage = live.runtime.storage
    assert storage.get(listed["key"]).startswith(b"\x89PNG")
    storage.delete(listed["key"])
    with pytest.raises(ObjectMissing):
        storage.get(listed["key"])
    response = httpx.get(listed["url"])
    assert response.status_code == 404
    if live.profile == "embedded":  # the API serves it, with a problem document
        assert response.json()["code"] == "NOT_FOUND" and listed["key"] in response.json()["detail"]
