"""The storage port and its local-directory adapter."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Protocol
from urllib.parse import quote, urlencode, urlparse

from dreamforge.artifacts.signing import UrlSigner
from dreamforge.config import Settings


class ObjectMissing(KeyError):
    """No object is stored under the key."""


class ArtifactStorage(Protocol):
    def put(self, key: str, data: bytes, content_type: str) -> None: ...

    def get(self, key: str) -> bytes:
        """The object's bytes; raises ``ObjectMissing`` if there is none."""
        ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None:
        """Remove the object; one that is already gone is no error."""
        ...

    def url(self, key: str, expires_in_s: int, base_url: str) -> str:
        """A URL anyone holding it may fetch until it expires."""
        ...

    def check(self) -> None:
        """Raise if the store cannot be written."""
        ...


class LocalStorage:
    """Files under one directory, served by the API behind HMAC-signed, expiring URLs."""

    def __init__(self, root: Path, signer: UrlSigner) -> None:
        self.root = root
        self._signer = signer
        root.mkdir(parents=True, exist_ok=True)
        self._real_root = root.resolve()  # resolving walks the path: once, not per key

    def _path(self, key: str) -> Path:
        path = (self._real_root / key).resolve()
        if not path.is_relative_to(self._real_root):
            raise ValueError(f"artifact key {key!r} escapes the storage root")
        return path

    def put(self, key: str, data: bytes, content_type: str) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename: a crash mid-write never leaves a truncated image under the key.
        partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
        partial.write_bytes(data)
        os.replace(partial, path)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError) as exc:
            raise ObjectMissing(key) from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        # An emptied job folder goes too (the key's parents, up to the root).
        for parent in path.parents:
            if parent == self._real_root or not parent.is_relative_to(self._real_root):
                break
            try:
                parent.rmdir()
            except OSError:  # not empty
                break

    def url(self, key: str, expires_in_s: int, base_url: str) -> str:
        expires = int(time.time()) + expires_in_s
        query = urlencode({"expires": expires, "signature": self._signer.sign(key, expires)})
        return f"{base_url.rstrip('/')}/v1/artifacts/{quote(key)}?{query}"

    def check(self) -> None:
        probe = self.root / ".ready"
        probe.write_text("ok")
        probe.unlink()


def open_storage(settings: Settings, signer: UrlSigner) -> ArtifactStorage:
    """``file:///dir`` (served by the API, signed URLs) or ``s3://bucket/prefix``."""
    url = settings.resolved_storage_url
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return LocalStorage(Path(parsed.path), signer)
    if parsed.scheme == "s3":
        from dreamforge.artifacts.s3 import S3Storage  # boto3 loads only when used

        return S3Storage(
            parsed.netloc,
            parsed.path,
            endpoint_url=settings.s3_endpoint_url,
            public_endpoint_url=settings.s3_public_endpoint_url,
            access_key_id=settings.s3_access_key_id,
            secret_access_key=(
                settings.s3_secret_access_key.get_secret_value()
                if settings.s3_secret_access_key
                else None
            ),
            region=settings.s3_region,
        )
    raise ValueError(f"unsupported storage URL {url!r}: use file:///dir or s3://bucket/prefix")
