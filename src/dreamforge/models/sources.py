"""Where a model comes from, as users write it.

``hf:ORG/REPO[@REV]`` (a diffusers repository), ``hf:ORG/REPO/path/file.safetensors[@REV]``
(one file), ``civitai:VERSION_ID``, a civitai.com model page, an AIR URN
(``urn:air:sdxl:checkpoint:civitai:MODEL@VERSION``) or an ``https://`` URL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit


class BadSource(ValueError):
    """Not a source Dream Forge can download from; the message shows the forms it takes."""


FORMS = (
    "use hf:ORG/REPO[@REVISION], hf:ORG/REPO/path/file.safetensors, civitai:VERSION_ID, "
    "a civitai.com model URL, urn:air:sdxl:checkpoint:civitai:MODEL@VERSION or an https:// URL"
)


@dataclass(frozen=True)
class HuggingFace:
    repo: str
    file: str | None  # one file of the repository, or the whole (diffusers) repository
    revision: str | None


@dataclass(frozen=True)
class Civitai:
    version_id: int | None
    model_id: int | None = None  # a model page without a version: its newest version


@dataclass(frozen=True)
class Url:
    url: str


Source = HuggingFace | Civitai | Url

_HF = re.compile(r"^hf:([\w.-]+/[\w.-]+)(/[^@]+)?(?:@([\w./-]+))?$")
_AIR = re.compile(r"^urn:air:[\w-]+:[\w-]+:civitai:(\d+)(?:@(\d+))?$")


def parse_source(text: str) -> Source:
    text = text.strip()
    if match := _HF.match(text):
        repo, file, revision = match.groups()
        return HuggingFace(repo, file.lstrip("/") if file else None, revision)
    if text.startswith("civitai:"):
        number = text.removeprefix("civitai:")
        if not number.isdigit():
            raise BadSource(f"{text!r}: civitai: takes a model version id (a number); {FORMS}")
        return Civitai(int(number))
    if match := _AIR.match(text):
        model, version = match.groups()
        return Civitai(int(version) if version else None, int(model))
    parts = urlsplit(text)
    if parts.scheme == "https" and parts.hostname in ("civitai.com", "www.civitai.com"):
        page = re.match(r"^/models/(\d+)", parts.path)
        version = parse_qs(parts.query).get("modelVersionId", [""])[0]
        if page or version.isdigit():
            return Civitai(
                int(version) if version.isdigit() else None, int(page[1]) if page else None
            )
    if parts.scheme == "https" and parts.hostname:
        return Url(text)
    raise BadSource(f"{text!r} is not a model source; {FORMS}")
