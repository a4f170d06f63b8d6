"""Who gets the detector next: a waiting detection request or a camera frame.

Requests go first (a caller is waiting on them) as long as running one more keeps their part of the
detector's recent busy time within `api.max_share` (judged with the typical cost of a request, so the share
is kept from above rather than crossed and corrected); otherwise camera frames get their turn, so a burst
of requests slows the cameras to at most (1 - max_share) of the detector and never stops them.
Work-conserving: whichever class has work runs when the other has none. "Recent" is an exponentially
decayed sum of busy seconds per class (half-life `half_life_s`), so the share follows the last few seconds,
not the whole uptime.
"""

from __future__ import annotations

import math
from typing import Literal

WorkKind = Literal["request", "frame"]


class DetectorShare:
    """Decayed busy time of the detector per class of work, and the choice that keeps requests within their share.

    Args:
        max_share: Share of detector time (0 < x <= 1) that requests may take while frames wait.
        half_life_s: Half-life of the busy-time memory, s.

    Raises:
        ValueError: `max_share` outside (0, 1] or `half_life_s` not positive.
    """

    def __init__(self, max_share: float, half_life_s: float = 2.0) -> None:
        if not 0 < max_share <= 1 or half_life_s <= 0:
            raise ValueError(f"max_share must be in (0, 1] and half_life_s > 0 (got {max_share}, {half_life_s})")
        self.max_share = max_share
        self._decay_per_s = math.log(2) / half_life_s
        self._busy: dict[WorkKind, float] = {"request": 0.0, "frame": 0.0}
        self._at: float | None = None
        self._request_cost = 0.0  # moving average of one request's busy seconds

    def _decay(self, now: float) -> None:
        if self._at is not None and now > self._at:
            k = math.exp(-self._decay_per_s * (now - self._at))
            for kind in self._busy:
                self._busy[kind] *= k
        self._at = now if self._at is None else max(self._at, now)

    def record(self, kind: WorkKind, busy_s: float, now: float) -> None:
        """Count `busy_s` seconds of detector time spent on `kind`, ending at `now` (monotonic s)."""
        self._decay(now)
        self._busy[kind] += max(0.0, busy_s)
        if kind == "request":
            c = self._request_cost
            self._request_cost = busy_s if c == 0.0 else 0.8 * c + 0.2 * busy_s

    def request_share(self, now: float) -> float:
        """Requests' share of the recent busy time, 0..1 (0 before any work)."""
        self._decay(now)
        total = self._busy["request"] + self._busy["frame"]
        return self._busy["request"] / total if total > 0 else 0.0

    def next_kind(self, request_waiting: bool, frame_waiting: bool, now: float) -> WorkKind | None:
        """What to run next, or None when nothing waits."""
        if request_waiting and (not frame_waiting or self._request_fits(now)):
            return "request"
        return "frame" if frame_waiting else None

    def _request_fits(self, now: float) -> bool:
        """Whether one more request, at its typical cost, keeps the requests' share within `max_share`."""
        self._decay(now)
        r, f, c = self._busy["request"], self._busy["frame"], self._request_cost
        return (r + c) <= self.max_share * (r + f + c)
