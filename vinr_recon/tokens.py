"""Bearer tokens compared as a secret must be: in constant time (`/api`, the dashboard, `/metrics`)."""

from __future__ import annotations

import hmac


def token_matches(presented: str, tokens: list[str]) -> bool:
    """Constant-time comparison against every configured token, with no early exit."""
    candidate = presented.encode("latin-1", "replace")
    matched = False
    for token in tokens:
        matched |= hmac.compare_digest(token.encode(), candidate)
    return matched
