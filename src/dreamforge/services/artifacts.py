"""A job's images: listed with URLs that expire, and served when a URL is signed."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from dreamforge.artifacts.signing import UrlSigner
from dreamforge.artifacts.storage import ArtifactStorage, ObjectMissing
from dreamforge.domain.clock import utcnow
from dreamforge.domain.errors import Forbidden, NotFound
from dreamforge.domain.records import Artifact
from dreamforge.store.jobs import JobRepository


@dataclass(frozen=True)
class ArtifactLink:
    artifact: Artifact
    url: str
    expires_at: datetime


class ArtifactService:
    def __init__(
        self, jobs: JobRepository, storage: ArtifactStorage, signer: UrlSigner, url_ttl_s: int
    ) -> None:
        self._jobs = jobs
        self._storage = storage
        self._signer = signer
        self._url_ttl_s = url_ttl_s

    def list(self, job_id: str, tenant: str, base_url: str) -> list[ArtifactLink]:
        """The job's artifacts in step and item order, each with a fresh URL; another
        tenant's job is as absent as one that never was."""
        artifacts = self._jobs.require_artifacts(job_id, tenant)
        expires_at = utcnow() + timedelta(seconds=self._url_ttl_s)
        return [
            ArtifactLink(a, self._storage.url(a.key, self._url_ttl_s, base_url), expires_at)
            for a in artifacts
        ]

    def content(self, artifact: Artifact) -> bytes:
        return self._storage.get(artifact.key)

    def open(self, key: str, expires: int, signature: str) -> tuple[Artifact, str, bytes]:
        """The artifact, its job's tenant and its bytes, for a URL this API signed and that
        has not expired."""
        if not self._signer.verify(key, expires, signature):
            raise Forbidden(
                "the URL's signature is invalid or it has expired; "
                "list the job's artifacts again for a fresh URL"
            )
        found = self._jobs.artifact_by_key(key)
        if found is None:
            raise NotFound("artifact", key)
        artifact, tenant = found
        try:
            return artifact, tenant, self._storage.get(key)
        except ObjectMissing as exc:  # deleted, or lost with its store
            raise NotFound("artifact", key) from exc
