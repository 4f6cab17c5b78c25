"""Seals on images: an HMAC of a PNG's bytes, in a chunk of its own, so that the service
can tell later that it made this image and that neither its pixels nor its receipt were
changed since.

The seal covers every chunk but itself (the pixels, the receipt and A1111's parameters),
so any edit, even a lossless re-save by another tool, breaks it. It is keyed with a key
derived from the service's signing key: whoever holds that key can check a seal, and no
one else can make one.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import zlib
from enum import Enum

SEAL_CHUNK = b"dreamforge-seal"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class SealCheck(Enum):
    VALID = "valid"  # made by this service, unchanged since
    ABSENT = "absent"  # no seal: not made by Dream Forge, or before seals
    BROKEN = "broken"  # sealed, but changed since, or sealed with another key
    NOT_PNG = "not_png"


def _chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    """(type, whole chunk bytes) for each chunk; ``ValueError`` if it is not a PNG."""
    if not png.startswith(PNG_SIGNATURE):
        raise ValueError("not a PNG")
    found, at = [], len(PNG_SIGNATURE)
    while at < len(png):
        if at + 8 > len(png):
            raise ValueError("a truncated PNG")
        (length,) = struct.unpack(">I", png[at : at + 4])
        kind = png[at + 4 : at + 8]
        end = at + 12 + length
        if end > len(png):
            raise ValueError("a truncated PNG")
        found.append((kind, png[at:end]))
        at = end
    return found


def _text_chunk(keyword: bytes, text: bytes) -> bytes:
    body = b"tEXt" + keyword + b"\x00" + text
    return struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body))


def _seal_of(chunk: bytes) -> bytes | None:
    if chunk[4:8] != b"tEXt":
        return None
    keyword, _, text = chunk[8:-4].partition(b"\x00")
    return text if keyword == SEAL_CHUNK else None


class Sealer:
    def __init__(self, signing_key: bytes) -> None:
        self._key = hmac.new(signing_key, b"dreamforge image seal v1", hashlib.sha256).digest()

    def _mac(self, chunks: list[bytes]) -> bytes:
        return (
            hmac.new(self._key, PNG_SIGNATURE + b"".join(chunks), hashlib.sha256)
            .hexdigest()
            .encode()
        )

    def seal(self, png: bytes) -> bytes:
        """The PNG with a seal chunk just before its end (any older seal replaced)."""
        chunks = [chunk for _, chunk in _chunks(png) if _seal_of(chunk) is None]
        mac = self._mac(chunks)
        return PNG_SIGNATURE + b"".join([*chunks[:-1], _text_chunk(SEAL_CHUNK, mac), chunks[-1]])

    def check(self, png: bytes) -> SealCheck:
        try:
            chunks = [chunk for _, chunk in _chunks(png)]
        except ValueError:
            return SealCheck.NOT_PNG
        seals = [s for s in (_seal_of(c) for c in chunks) if s is not None]
        if not seals:
            return SealCheck.ABSENT
        rest = [c for c in chunks if _seal_of(c) is None]
        valid = len(seals) == 1 and hmac.compare_digest(seals[0], self._mac(rest))
        return SealCheck.VALID if valid else SealCheck.BROKEN
