"""Downloading one file safely: resumable, size-capped, verified, and only from hosts on
an allow list, redirects included.

A download lands in ``NAME.partial`` beside its destination and is renamed only once its
sha256 is known (and, where the source declared one, matched), so a file under its real
name is always whole. An interrupted download resumes from the partial file with an HTTP
``Range`` request.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx

from dreamforge.models.formats import file_sha256

Progress = Callable[[int, int | None], None]  # bytes so far, total if known


class DownloadError(RuntimeError):
    """A download failed; the message says why and what to do. Nothing was kept."""


class HashMismatch(DownloadError):
    def __init__(self, name: str, expected: str, actual: str) -> None:
        super().__init__(f"{name}: sha256 {actual} does not match the {expected} declared")
        self.expected, self.actual = expected, actual


def safe_name(name: str) -> str:
    """A remote file name made safe to write: no folders, no traversal, no odd bytes."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = re.sub(r"[^\w.+ ()-]", "_", base).strip(" .")
    if not cleaned:
        raise DownloadError(f"the remote file name {name!r} has nothing usable in it")
    return cleaned[:200]


def host_allowed(url: str, patterns: Iterable[str]) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    return any(fnmatch.fnmatchcase(host, p.lower()) for p in patterns)


def fetch(
    client: httpx.Client,
    url: str,
    destination: Path,
    *,
    allowed_hosts: Iterable[str],
    max_bytes: int,
    expected_sha256: str | None = None,
    auth: Mapping[str, str] | None = None,
    progress: Progress | None = None,
) -> str:
    """Download ``url`` to ``destination`` and return its sha256.

    ``auth`` headers go with the request for ``url`` only, never to where it redirects
    (a CDN's presigned URL needs no token, and has no business with the user's).
    """
    allowed = list(allowed_hosts)
    partial = destination.with_name(destination.name + ".partial")
    destination.parent.mkdir(parents=True, exist_ok=True)
    have = partial.stat().st_size if partial.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    first = url
    for _ in range(10):
        if not host_allowed(url, allowed):
            raise DownloadError(
                f"{urlsplit(url).hostname} is not an allowed download host; add it to "
                "DREAMFORGE_DOWNLOAD_HOSTS if you trust it"
            )
        sent = {**headers, **(auth or {})} if url == first else headers
        try:
            done = _receive(client, url, sent, partial, have, max_bytes, progress)
        except httpx.TransportError as exc:
            kept = partial.stat().st_size if partial.exists() else 0
            raise DownloadError(
                f"{destination.name}: the connection broke after {kept:,} bytes ({exc}); "
                "run the same command again to resume"
            ) from exc
        if done is None:
            break
        url = done
    else:
        raise DownloadError(f"too many redirects fetching {destination.name}")
    actual = file_sha256(partial)
    if expected_sha256 is not None and actual != expected_sha256.lower():
        partial.unlink()
        raise HashMismatch(destination.name, expected_sha256.lower(), actual)
    partial.rename(destination)
    return actual


def _receive(
    client: httpx.Client,
    url: str,
    headers: Mapping[str, str],
    partial: Path,
    have: int,
    max_bytes: int,
    progress: Progress | None,
) -> str | None:
    """One request: the next URL if it redirects, else ``None`` once the body is in."""
    name = partial.name.removesuffix(".partial")
    destination = partial.with_name(name)
    with client.stream("GET", url, headers=headers) as response:
        if response.is_redirect:
            return urljoin(url, response.headers["location"])
        _check(response, name)
        if response.status_code != 206:  # the server ignored Range: start over
            have = 0
        total = _total(response, have)
        if total is not None and total > max_bytes:
            raise DownloadError(
                f"{destination.name} is {total:,} bytes, over the cap of {max_bytes:,} bytes"
            )
        with partial.open("ab" if have else "wb") as out:
            received = have
            for chunk in response.iter_bytes():  # as it arrives: a break keeps what came
                received += len(chunk)
                if received > max_bytes:
                    raise DownloadError(
                        f"{destination.name} grew past the cap of {max_bytes:,} bytes"
                    )
                out.write(chunk)
                if progress is not None:
                    progress(received, total)
    return None


def _check(response: httpx.Response, name: str) -> None:
    if response.status_code in (401, 403):
        raise DownloadError(
            f"{name}: the server refused ({response.status_code}); it needs a token"
        )
    if response.status_code == 404:
        raise DownloadError(f"{name}: not found at {response.url}")
    if response.status_code >= 400:
        raise DownloadError(f"{name}: the server answered {response.status_code}")
    if response.headers.get("content-type", "").startswith("text/html"):
        # CivitAI answers a download that needs a login with its login page.
        raise DownloadError(
            f"{name}: the server sent a web page instead of the file, which is what a login "
            "page looks like; set the source's token (CIVITAI_TOKEN, HF_TOKEN)"
        )


def _total(response: httpx.Response, have: int) -> int | None:
    length = response.headers.get("content-length")
    return have + int(length) if length is not None and length.isdigit() else None
