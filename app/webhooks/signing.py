"""`X-Vigil-Signature`: HMAC-SHA256 of the exact request body, the GitHub webhook convention.

The header is `X-Vigil-Signature: sha256=<64 lowercase hex digits>`, the HMAC-SHA256 of the body bytes as
sent, keyed with the secret's UTF-8 bytes. A receiver computes the same over the raw body it received
(before any JSON parsing: re-serialising changes bytes) and compares with `hmac.compare_digest`.
"""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "X-Vigil-Signature"
_PREFIX = "sha256="


def sign(secret: str, body: bytes) -> str:
    """The header value for `body`: `sha256=` and the hex HMAC-SHA256 keyed with `secret` (UTF-8)."""
    return _PREFIX + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str | None) -> bool:
    """Whether `header` is the signature of `body` under `secret` (constant-time; False when missing)."""
    return header is not None and hmac.compare_digest(sign(secret, body), header)
