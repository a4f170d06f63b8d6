"""Which local addresses WebRTC offers as ICE host candidates.

aioice offers every non-loopback interface and has no option to choose. An appliance needs to choose:
a preview bound to 127.0.0.1 must connect over loopback (offline boxes, SSH tunnels, tests), and one
bound to a LAN address should not leak other interfaces. The choice travels in a context variable set
around `setLocalDescription`, so concurrent peers with different needs do not interfere.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import aioice.ice

from app.config import HttpConfig
from app.netaddr import is_loopback

_addresses: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("vigil_ice_addresses", default=None)
_original = aioice.ice.get_host_addresses


def _host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    chosen = _addresses.get()
    if chosen is None:
        return _original(use_ipv4, use_ipv6)
    return [a for a in chosen if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]


def install() -> None:
    """Idempotent: route aioice's address lookup through the context variable."""
    aioice.ice.get_host_addresses = _host_addresses


def addresses_for(cfg: HttpConfig) -> list[str] | None:
    """Configured addresses; loopback for a loopback bind; the bind address; None = every interface."""
    if cfg.ice_addresses is not None:
        return list(cfg.ice_addresses)
    if is_loopback(cfg.host):
        return ["::1"] if cfg.host == "::1" else ["127.0.0.1"]
    if cfg.host in ("0.0.0.0", "::", ""):
        return None
    return [cfg.host]


@contextlib.contextmanager
def host_addresses(addresses: list[str] | None) -> Iterator[None]:
    """Within the block (in this context only), offer these ICE host addresses; None offers every interface.

    ``install()`` must have been called for it to take effect. IPv4 and IPv6 entries are filtered by what
    aioice asks for.
    """
    token = _addresses.set(addresses)
    try:
        yield
    finally:
        _addresses.reset(token)
