"""The supervisor's policies as pure objects: made-up instants, no process, no clock, no sleep."""

from __future__ import annotations

import pytest

from app.capture.backoff import Backoff
from app.config import WatchdogConfig, WorkerConfig
from app.supervisor.policy import RecyclePolicy, RestartBudget


def budget(max_restarts: int = 3, window_s: float = 600.0) -> RestartBudget:
    return RestartBudget(max_restarts, window_s, Backoff(1.0, 30.0, jitter=0.0))


def test_restart_backoff_doubles_within_the_window_up_to_the_cap() -> None:
    b = RestartBudget(10, 600.0, Backoff(1.0, 30.0, jitter=0.0))
    delays = [b.record(100.0 + i).delay_s for i in range(7)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_restart_budget_gives_up_only_past_max_restarts_within_the_window() -> None:
    b = budget(max_restarts=3, window_s=600.0)
    decisions = [b.record(t) for t in (0.0, 10.0, 20.0, 30.0)]
    assert [d.give_up for d in decisions] == [False, False, False, True]
    assert [d.restarts_in_window for d in decisions] == [1, 2, 3, 4]


def test_restarts_older_than_the_window_are_forgotten_and_the_backoff_starts_over() -> None:
    b = budget(max_restarts=2, window_s=100.0)
    b.record(0.0)
    b.record(50.0)
    d = b.record(151.0)  # 0.0 and 50.0 left the window (151 - 50 > 100)
    assert d.restarts_in_window == 1 and not d.give_up and d.delay_s == 1.0


def test_restart_budget_from_config_uses_the_worker_backoff_keys() -> None:
    worker = WorkerConfig(restart_backoff_s=0.5, restart_backoff_max_s=0.75)
    b = RestartBudget.from_config(WatchdogConfig(max_restarts=1), worker)
    assert [b.record(t).delay_s for t in (0.0, 1.0)] == [0.5, 0.75]
    assert b.record(2.0).give_up


def test_rss_above_the_limit_recycles() -> None:
    p = RecyclePolicy(WatchdogConfig(max_rss_mb=500))
    p.reset(0.0)
    assert p.check(1.0, 499.0) is None
    assert p.check(2.0, 501.0) == "RSS 501 MB above watchdog.max_rss_mb=500"


def test_growth_is_measured_only_after_warm_up_and_over_enough_span() -> None:
    wd = WatchdogConfig(max_rss_growth_mb_per_hour=100, rss_warmup_s=60, rss_window_s=600)
    p = RecyclePolicy(wd)
    p.reset(0.0)
    # Loading and warming up allocate fast: ignored during the warm-up.
    for t in range(0, 60, 5):
        assert p.check(float(t), 100.0 + 10 * t) is None
    # After the warm-up, 1 MB/s = 3600 MB/h, but not before the samples span 60 s (min(60, window/2)).
    for t in range(60, 120, 5):
        assert p.check(float(t), 1000.0 + (t - 60)) is None, t
    reason = p.check(120.0, 1060.0)
    assert reason is not None and reason.startswith("RSS growing 3600 MB/h (> 100 MB/h), now 1060 MB")


def test_flat_memory_is_never_recycled_and_reset_starts_the_samples_over() -> None:
    p = RecyclePolicy(WatchdogConfig(max_rss_growth_mb_per_hour=100, rss_warmup_s=0, rss_window_s=120))
    p.reset(0.0)
    for t in range(0, 300, 5):
        assert p.check(float(t), 800.0 + (t % 2)) is None
    assert p.growth_mb_per_hour() == pytest.approx(0.0, abs=20)
    p.reset(300.0)
    assert p.growth_mb_per_hour() is None


def test_samples_leave_the_sliding_window() -> None:
    p = RecyclePolicy(WatchdogConfig(max_rss_growth_mb_per_hour=100, rss_warmup_s=0, rss_window_s=100))
    p.reset(0.0)
    for t in range(0, 100, 5):  # a growth phase that ends ...
        p.check(float(t), 100.0 + 10 * t)
    for t in range(100, 400, 5):  # ... then flat for longer than the window: the old slope is forgotten
        reason = p.check(float(t), 1090.0)
    assert reason is None


def test_periodic_recycle_after_recycle_every_h_counts_from_ready() -> None:
    p = RecyclePolicy(WatchdogConfig(recycle_every_h=1.0))
    p.reset(1000.0)
    assert p.check(1000.0 + 3599.0, 100.0) is None
    assert p.check(1000.0 + 3600.0, 100.0) == "periodic recycle after 3600 s"
    p.reset(5000.0)
    assert p.check(5001.0, 100.0) is None


def test_rules_that_are_zero_are_off() -> None:
    p = RecyclePolicy(WatchdogConfig())
    p.reset(0.0)
    assert all(p.check(float(t), 10_000.0 + 100 * t) is None for t in range(0, 100_000, 997))
