"""systemd's notify protocol (sd_notify(3)) over $NOTIFY_SOCKET, in a few lines and without a dependency.

A no-op when the service does not run under systemd (no NOTIFY_SOCKET), so the pipeline calls it
unconditionally.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)


class SystemdNotifier:
    """Sends sd_notify datagrams to systemd's $NOTIFY_SOCKET; every method is a no-op returning False without it.

    Args:
        env: The environment to read NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID from; `os.environ` when None.
    """

    def __init__(self, env: dict[str, str] | None = None) -> None:
        environ: Mapping[str, str] = os.environ if env is None else env
        self.address = environ.get("NOTIFY_SOCKET") or None
        usec = environ.get("WATCHDOG_USEC", "")
        pid = environ.get("WATCHDOG_PID", "")
        # WATCHDOG_PID, when set, names the process systemd expects pings from.
        self.watchdog_s = int(usec) / 1e6 if usec.isdigit() and (not pid or pid == str(os.getpid())) else None
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        """True when running under systemd with a notify socket."""
        return self.address is not None

    def notify(self, *fields: str) -> bool:
        """Send `fields` (e.g. "READY=1", "STATUS=...") as one newline-joined datagram.

        Returns:
            True when sent; False without a notify socket or when the send failed (logged at debug, not raised).
        """
        if self.address is None:
            return False
        addr = self.address
        if addr.startswith("@"):  # abstract namespace socket
            addr = "\0" + addr[1:]
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(fields).encode(), addr)
            return True
        except OSError as exc:
            log.debug("sd_notify to %s failed: %s", self.address, exc)
            return False

    def ready(self, status: str = "") -> bool:
        """Tell systemd start-up finished (READY=1), with an optional STATUS= line."""
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def watchdog(self) -> bool:
        """Ping the service watchdog (WATCHDOG=1)."""
        return self.notify("WATCHDOG=1")

    def status(self, text: str) -> bool:
        """Set the status line `systemctl status` shows (STATUS=text)."""
        return self.notify(f"STATUS={text}")

    def stopping(self) -> bool:
        """Tell systemd the service is shutting down (STOPPING=1)."""
        return self.notify("STOPPING=1")

    def close(self) -> None:
        """Close the datagram socket, if one was opened."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


async def watchdog_pings(notifier: SystemdNotifier, healthy: Callable[[], bool]) -> None:
    """Send WATCHDOG=1 every half `WatchdogSec=` while `healthy()`.

    A hung loop or a dead pipeline stops the pings and systemd restarts the service. Returns at once when
    systemd set no watchdog; runs until cancelled.
    """
    period = (notifier.watchdog_s or 0) / 2
    if period <= 0:
        return
    while True:
        await asyncio.sleep(period)
        if healthy():
            notifier.watchdog()
