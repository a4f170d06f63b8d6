"""Operations monitoring: watchers of the pipeline's results that raise system events (budget, drift).

    worker result -> stages -> services (published) -> monitors.observe(record, published_mono_ns)
    every tick: monitors.check(now) -> SystemEvents -> log, stats, MQTT <base>/<camera>/system, WebSocket

`build_monitors` is the one place that decides which monitors run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from app.monitoring.base import Monitor
from app.monitoring.budget import BudgetMonitor
from app.monitoring.drift import DriftMonitor

if TYPE_CHECKING:
    from app.config import VigilConfig
    from app.pipeline.stats import CameraStats

__all__ = ["BudgetMonitor", "DriftMonitor", "Monitor", "build_monitors"]


def build_monitors(cfg: VigilConfig, stats: Mapping[str, CameraStats]) -> list[Monitor]:
    """The monitors of a live pipeline, in the order they see results.

    Args:
        cfg: The whole config (`budget`, `monitoring`, cameras).
        stats: Camera name -> its live counters (filled as cameras open; read, never written).
    """
    return [BudgetMonitor(cfg, stats), DriftMonitor(cfg)]
