"""VINR's webhook signature scheme (contract section 1); byte-for-byte Stripe's.

    x-vinr-signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of b"{t}.{raw body}">[,v1=...][,v0=...]

Pure and stdlib only: the clock is an argument, so every case is a plain unit test.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from enum import StrEnum


class Reason(StrEnum):
    MISSING_HEADER = "missing header"
    MALFORMED_HEADER = "malformed header"
    NO_V1_SIGNATURE = "no v1 signature"
    NO_MATCHING_SIGNATURE = "no matching signature"
    TIMESTAMP_TOO_OLD = "timestamp too old"
    TIMESTAMP_TOO_NEW = "timestamp too new"


class SignatureError(Exception):
    """The delivery is not authentic; `reason` says why (safe to log: no secret, no signature)."""

    def __init__(self, reason: Reason):
        super().__init__(reason.value)
        self.reason = reason


def _mac(body: bytes, secret: str, timestamp: int | str) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(body: bytes, secret: str, timestamp: int) -> str:
    """The header value VINR would send for `body` delivered at `timestamp`."""
    return f"t={timestamp},v1={_mac(body, secret, timestamp)}"


def sign_many(body: bytes, secrets: Iterable[str], timestamp: int) -> str:
    """One header signed under several secrets, as VINR does while a secret is rolled."""
    return f"t={timestamp}," + ",".join(f"v1={_mac(body, s, timestamp)}" for s in secrets)


def _parse(header: str) -> tuple[str, list[str]]:
    timestamp: str | None = None
    v1: list[str] = []
    for element in header.split(","):
        key, sep, value = element.strip().partition("=")
        if not sep:
            raise SignatureError(Reason.MALFORMED_HEADER)
        key, value = key.strip(), value.strip()
        if key == "t":
            timestamp = value
        elif key == "v1":
            v1.append(value)
    # Twelve digits reach the year 33658; a longer "number" is an attack on int(), not a time.
    if timestamp is None or not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
        raise SignatureError(Reason.MALFORMED_HEADER)
    return timestamp, v1


def verify(
    body: bytes,
    header: str | None,
    secrets: Iterable[str],
    now: int,
    tolerance: int = 300,
) -> int:
    """Return the delivery's timestamp if any `v1` matches under any secret within tolerance.

    Raises `SignatureError` (and nothing else) for any header whatsoever that is not that.
    """
    if not header:
        raise SignatureError(Reason.MISSING_HEADER)
    timestamp, candidates = _parse(header)
    if not candidates:
        raise SignatureError(Reason.NO_V1_SIGNATURE)
    matched = False
    for secret in secrets:
        expected = _mac(body, secret, timestamp).encode()
        for candidate in candidates:
            # Every comparison runs in full: no early exit reveals which secret or entry matched.
            matched |= hmac.compare_digest(expected, candidate.encode("utf-8", "replace"))
    if not matched:
        raise SignatureError(Reason.NO_MATCHING_SIGNATURE)
    t = int(timestamp)
    if now - t > tolerance:
        raise SignatureError(Reason.TIMESTAMP_TOO_OLD)
    if t - now > tolerance:
        raise SignatureError(Reason.TIMESTAMP_TOO_NEW)
    return t
