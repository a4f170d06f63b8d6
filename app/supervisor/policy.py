"""The supervisor's decisions as pure, clock-injected objects.

When to give up restarting a worker, how long to wait before the next restart, and when to recycle a healthy-looking
worker. Nothing here spawns, sleeps or reads the clock, so every rule is unit-tested with made-up instants.

Modelled on Frigate's `watchdog.py` (`MonitoredProcess.is_restarting_too_fast`): the restart budget is a
window count, not a lifetime count, so a worker that crashes once a week is restarted forever while a crash
loop ends the service (exit 3, systemd restarts it with its own backoff).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from app.capture.backoff import Backoff
from app.config import WatchdogConfig, WorkerConfig


@dataclass(frozen=True, slots=True)
class RestartDecision:
    """What to do after a worker failure.

    Attributes:
        restarts_in_window: Restarts within the window, this one included.
        give_up: More than `max_restarts` in the window: stop restarting, exit 3.
        delay_s: Wait this long before starting the replacement (exponential, capped).
    """

    restarts_in_window: int
    give_up: bool
    delay_s: float


class RestartBudget:
    """At most `max_restarts` worker restarts within `window_s`, with exponential backoff between them.

    Args:
        max_restarts: Restarts allowed within the window (`watchdog.max_restarts`).
        window_s: The sliding window in seconds (`watchdog.restart_window_s`).
        backoff: Delay per restart number in the window (first restart waits `initial_s`).
    """

    def __init__(self, max_restarts: int, window_s: float, backoff: Backoff) -> None:
        self.max_restarts = max_restarts
        self.window_s = window_s
        self.backoff = backoff
        self._times: deque[float] = deque()

    @classmethod
    def from_config(cls, watchdog: WatchdogConfig, worker: WorkerConfig) -> RestartBudget:
        """The budget the config describes; no jitter (one worker per appliance: nothing to desynchronise)."""
        backoff = Backoff(worker.restart_backoff_s, max(worker.restart_backoff_s, worker.restart_backoff_max_s),
                          jitter=0.0)  # fmt: skip
        return cls(watchdog.max_restarts, watchdog.restart_window_s, backoff)

    def record(self, now: float) -> RestartDecision:
        """Count a restart at `now` (monotonic seconds) and decide."""
        while self._times and now - self._times[0] > self.window_s:
            self._times.popleft()
        self._times.append(now)
        n = len(self._times)
        return RestartDecision(n, n > self.max_restarts, self.backoff.delay_for(n - 1))


class RecyclePolicy:
    """When a worker that still answers should be replaced blue-green.

    RSS above a limit, RSS growing faster than a limit (least-squares slope over a sliding window, after a warm-up), or
    plain age.

    Args:
        watchdog: `max_rss_mb`, `max_rss_growth_mb_per_hour`, `rss_warmup_s`, `rss_window_s`,
            `recycle_every_h` (0 turns a rule off).
    """

    def __init__(self, watchdog: WatchdogConfig) -> None:
        self.cfg = watchdog
        self._ready_at = 0.0
        self._samples: deque[tuple[float, float]] = deque()

    def reset(self, now: float) -> None:
        """A new worker became the serving one at `now` (monotonic seconds): its age and samples start over."""
        self._ready_at = now
        self._samples.clear()

    def check(self, now: float, rss_mb: float) -> str | None:
        """Record one RSS sample (MiB) at `now`; the reason to recycle, or None to keep the worker."""
        wd = self.cfg
        age = now - self._ready_at
        if age >= wd.rss_warmup_s:
            self._samples.append((now, rss_mb))
            while self._samples and now - self._samples[0][0] > wd.rss_window_s:
                self._samples.popleft()
        if wd.max_rss_mb and rss_mb > wd.max_rss_mb:
            return f"RSS {rss_mb:.0f} MB above watchdog.max_rss_mb={wd.max_rss_mb:g}"
        slope = self.growth_mb_per_hour()
        if wd.max_rss_growth_mb_per_hour and slope is not None and slope > wd.max_rss_growth_mb_per_hour:
            return f"RSS growing {slope:.0f} MB/h (> {wd.max_rss_growth_mb_per_hour:g} MB/h), now {rss_mb:.0f} MB"
        if wd.recycle_every_h and age >= wd.recycle_every_h * 3600:
            return f"periodic recycle after {age:.0f} s"
        return None

    def growth_mb_per_hour(self) -> float | None:
        """The RSS slope over the window in MiB/h; None until 3 samples span min(60 s, half the window)."""
        if len(self._samples) < 3:
            return None
        t = np.array([s[0] for s in self._samples])
        if t[-1] - t[0] < min(60.0, self.cfg.rss_window_s / 2):  # a slope over a few seconds is noise
            return None
        return float(np.polyfit(t - t[0], [s[1] for s in self._samples], 1)[0]) * 3600
