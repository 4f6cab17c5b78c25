"""HMAC signatures for artifact URLs served by the API itself."""

from __future__ import annotations

import hashlib
import hmac
import time


class UrlSigner:
    def __init__(self, key: bytes) -> None:
        self._key = key

    def sign(self, key: str, expires: int) -> str:
        message = f"{key}\n{expires}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def verify(self, key: str, expires: int, signature: str) -> bool:
        """True only for an unexpired URL whose signature matches exactly."""
        if expires < time.time():
            return False
        # Bytes, not str: compare_digest refuses non-ASCII str, and a client chose these.
        given = signature.encode("utf-8", "surrogateescape")
        return hmac.compare_digest(self.sign(key, expires).encode(), given)
