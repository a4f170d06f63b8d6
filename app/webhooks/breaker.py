"""A circuit breaker per webhook receiver: a dead receiver costs one probe per `open_s`, not one try per event.

The usual pattern: `closed` (requests go through) -> `open` after `failures_to_open` consecutive failures
(nothing goes through) -> after `open_s` `half_open` lets ONE probe through -> `closed` when it succeeds,
`open` again (for another `open_s`) when it fails. Pure and clock-injected: no I/O, no sleeping, no tasks.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

BreakerState = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """Tracks consecutive failures of one receiver and says when a request may go out.

    Args:
        failures_to_open: Consecutive failures (>= 1) that open a closed breaker.
        open_s: Seconds (> 0) an open breaker waits before it lets one probe through.
        clock: Monotonic seconds; `time.monotonic` unless a test drives it.

    Raises:
        ValueError: `failures_to_open` < 1 or `open_s` <= 0.
    """

    def __init__(self, failures_to_open: int, open_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if failures_to_open < 1 or open_s <= 0:
            raise ValueError("failures_to_open must be >= 1 and open_s > 0")
        self.failures_to_open = failures_to_open
        self.open_s = open_s
        self._clock = clock
        self._state: BreakerState = "closed"
        self._failures = 0  # consecutive, while closed
        self._opened_at = 0.0
        self._probing = False  # the half-open probe is out
        self.opens = 0  # how often it opened (closed -> open and failed probes alike)

    @property
    def state(self) -> BreakerState:
        """`closed`, `open` or `half_open`; an open breaker whose `open_s` passed reads `half_open`."""
        if self._state == "open" and self._clock() - self._opened_at >= self.open_s:
            return "half_open"
        return self._state

    def wait_s(self) -> float:
        """Seconds until a request may go out: 0 when closed or a probe is due, else the rest of `open_s`.

        While the half-open probe is out, `open_s` (the caller should report its outcome first).
        """
        if self._state == "closed":
            return 0.0
        if self._probing:
            return self.open_s
        return max(0.0, self._opened_at + self.open_s - self._clock())

    def allow(self) -> bool:
        """Whether a request may go out now; True for an open breaker's probe turns it `half_open`.

        Only one probe is let through until `record_success` or `record_failure` reports its outcome.
        """
        if self._state == "closed":
            return True
        if self._probing or self.state != "half_open":
            return False
        self._state = "half_open"
        self._probing = True
        return True

    def record_success(self) -> None:
        """The request succeeded: close (a probe's success ends the outage) and forget earlier failures."""
        self._state = "closed"
        self._failures = 0
        self._probing = False

    def record_failure(self) -> None:
        """The request failed: count it while closed (opening at the limit); a failed probe reopens."""
        if self._state == "closed":
            self._failures += 1
            if self._failures < self.failures_to_open:
                return
        self._state = "open"
        self._opened_at = self._clock()
        self._probing = False
        self._failures = 0
        self.opens += 1
