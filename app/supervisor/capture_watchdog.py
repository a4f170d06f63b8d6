"""Restarts a capture that stopped delivering frames.

A read stuck in a driver (V4L2, a hung RTSP socket) cannot be interrupted from Python, so the stuck thread
is abandoned (it can never write to the ring again: its write lock is taken over) and a fresh capture thread
takes its place on the same ring and counters.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, MutableMapping

from app.capture.loop import CaptureLoop
from app.ring import FrameRing


class CaptureWatchdog:
    """Restart captures that delivered nothing for `timeout_s` while connected.

    Args:
        timeout_s: Seconds without a frame before a restart (`watchdog.capture_timeout_s`).
        on_restart: Called as `on_restart(camera, reason)` for each restart (a system event).
        clock_ns: Monotonic clock in nanoseconds (injected by tests).
    """

    def __init__(
        self,
        timeout_s: float,
        on_restart: Callable[[str, str], None],
        clock_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.timeout_ns = timeout_s * 1e9
        self.on_restart = on_restart
        self.clock_ns = clock_ns

    def check(self, captures: MutableMapping[str, CaptureLoop], rings: Mapping[str, FrameRing]) -> list[str]:
        """Replace every stalled capture in `captures` (started, same ring); returns the restarted cameras.

        Finished sources (a file at its end), disconnected ones (their own reconnect loop with backoff runs)
        and ones that never delivered a frame are left alone.
        """
        now = self.clock_ns()
        restarted = []
        for name, cap in list(captures.items()):
            c = cap.counters
            if cap.finished or not c.connected or not c.last_frame_mono_ns:
                continue
            if now - c.last_frame_mono_ns > self.timeout_ns:
                self.on_restart(name, f"no frame for {(now - c.last_frame_mono_ns) / 1e9:.1f} s")
                cap.abandon()
                c.connected = False
                c.reconnects += 1
                c.last_frame_mono_ns = now  # the grace period starts again
                fresh = CaptureLoop(cap.camera, rings[name], c, write_lock=cap.write_lock)  # no faults again
                captures[name] = fresh
                fresh.start()
                restarted.append(name)
        return restarted
