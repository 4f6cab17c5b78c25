"""The S3 adapter of the storage port: any S3 API (AWS, R2, MinIO, SeaweedFS)."""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from dreamforge.artifacts.storage import ObjectMissing

# What S3 implementations answer for an absent key (HEAD has no body, hence a bare 404).
_MISSING = ("404", "NoSuchKey", "NotFound")


def _code(exc: ClientError) -> str | None:
    """The error code S3 answered with."""
    code = exc.response.get("Error", {}).get("Code")
    return str(code) if code is not None else None


class S3Storage:
    """Objects under ``prefix`` in ``bucket``; clients download through presigned URLs."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        public_endpoint_url: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        region: str = "us-east-1",
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        # Path-style addressing works with every S3 implementation, not only AWS.
        config = Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=5,
            read_timeout=30,
        )
        credentials: dict[str, Any] = {
            "aws_access_key_id": access_key_id,
            "aws_secret_access_key": secret_access_key,
            "region_name": region,
            "config": config,
        }
        self._client = boto3.client("s3", endpoint_url=endpoint_url, **credentials)
        self._signing_client = (
            boto3.client("s3", endpoint_url=public_endpoint_url, **credentials)
            if public_endpoint_url
            else self._client
        )
        self._bucket_ready = False

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (once per process)."""
        if self._bucket_ready:
            return
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if _code(exc) not in ("404", "NoSuchBucket"):
                raise
            try:
                self._client.create_bucket(Bucket=self.bucket)
            except ClientError as race:  # another process created it first
                if _code(race) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise
        self._bucket_ready = True

    def put(self, key: str, data: bytes, content_type: str) -> None:
        self.ensure_bucket()
        self._client.put_object(
            Bucket=self.bucket, Key=self._key(key), Body=data, ContentType=content_type
        )

    def get(self, key: str) -> bytes:
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if _code(exc) in _MISSING:
                raise ObjectMissing(key) from exc
            raise
        return response["Body"].read()  # type: ignore[no-any-return]

    def exists(self, key: str) -> bool:
        try:
            self._client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if _code(exc) in _MISSING:
                return False
            raise
        return True

    def delete(self, key: str) -> None:
        self._client.delete_object(Bucket=self.bucket, Key=self._key(key))  # 204 if absent

    def url(self, key: str, expires_in_s: int, base_url: str) -> str:
        return self._signing_client.generate_presigned_url(  # type: ignore[no-any-return]
            "get_object",
            Params={"Bucket": self.bucket, "Key": self._key(key)},
            ExpiresIn=expires_in_s,
        )

    def check(self) -> None:
        self.ensure_bucket()
        self._client.head_bucket(Bucket=self.bucket)
