"""Which configured API key a request holds (constant-time, so timing says nothing about which)."""

from __future__ import annotations

import hmac


def bearer_key(authorization: str, keys: tuple[str, ...]) -> str | None:
    """The key of `keys` that an `Authorization: Bearer <key>` header holds, or None."""
    scheme, _, token = authorization.partition(" ")
    given = token.strip().encode()
    matched: str | None = None
    for key in keys:  # compare against every key, always
        if hmac.compare_digest(given, key.encode()):
            matched = key
    return matched if scheme.lower() == "bearer" else None
