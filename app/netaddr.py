"""Address helpers shared by the HTTP server and WebRTC."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """Whether a bind host is a loopback address: ``localhost``, ``::1`` or any 127.0.0.0/8 literal.

    Other host names are not resolved and count as not loopback.
    """
    if host in ("localhost", "::1"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
