"""Tracking and the object lifecycle as a pipeline stage: per camera, a result becomes a tracked result
(track id per detection) plus object events (new, update, end, alert) that every service receives.

Placeholder until the stage moves here from the MQTT service: it passes records through unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping

from app.config import VigilConfig
from app.pipeline.records import ResultRecord
from app.tracking.objects import ObjectEvent


class TrackingStage:
    """Per-camera tracker and object lifecycle.

    Args:
        cfg: The whole config (cameras and the tracking keys).
    """

    def __init__(self, cfg: VigilConfig) -> None:
        self.cameras = [c.name for c in cfg.cameras]

    def on_model_ready(self, names: Mapping[int, str]) -> None:
        """A model with these labels serves now."""

    def process(self, record: ResultRecord) -> ResultRecord:
        """The record with track ids, this frame's object events and the counts after it."""
        return record

    def set_detection(self, camera: str, enabled: bool) -> list[ObjectEvent]:
        """Detection switched on or off for a camera; off ends its objects (returns their `end` events)."""
        return []

    def counts(self, camera: str) -> Mapping[str, int]:
        """Announced objects of a camera per label, plus `all`."""
        return {}
