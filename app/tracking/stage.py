"""Tracking and the object lifecycle as a pipeline stage.

Per camera, a result becomes a tracked result (track id per detection) plus object events (new, update, end, alert) that
every service receives.

It runs for every result, whatever services are configured, so JSON lines, the web side and MQTT all see the
same track ids, events and counts. MQTT only publishes them.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Protocol

import numpy as np

from app.config import TrackingConfig, VigilConfig
from app.inference.protocol import TrackHint
from app.pipeline.records import ResultRecord
from app.tracking.iou_tracker import IouTracker
from app.tracking.objects import ObjectEvent, ObjectLifecycle
from app.types import Detections

DETECTION_OFF_REASON = "detection switched off"
RELOAD_REASON = "config reloaded"


class Tracker(Protocol):
    """A multi-object tracker of one camera."""

    def update(self, det: Detections, t: float) -> np.ndarray:
        """Track the detections of one frame.

        Args:
            det: The frame's N detections, pixels.
            t: The frame's instant in seconds (monotonic).

        Returns:
            `(N,)` int64 track id per detection (>= 1), 0 where the tracker keeps a detection out of every track.
        """
        ...


def make_tracker(kind: str, max_age_s: float) -> Tracker:
    """The configured tracker (`tracking.tracker`).

    Args:
        kind: `iou` (built in) or `bytetrack`.
        max_age_s: Seconds a track survives unseen.

    Raises:
        ImportError: `bytetrack` without the `tracking` extra installed.
    """
    if kind == "bytetrack":
        from app.tracking.bytetrack import ByteTrack

        return ByteTrack(max_age_s=max_age_s)
    return IouTracker(max_age_s=max_age_s)


class TrackingStage:
    """Per-camera tracker and object lifecycle.

    A camera's frames are tracked once a model serves (`on_model_ready`) and while its detection is on;
    other records pass through unchanged (`tracker_id` None, no events, no counts).

    Args:
        cfg: The whole config (cameras and the `tracking` keys).
        wall_clock: Wall-clock seconds for the objects' `first_seen`/`last_seen` (`time.time`; tests inject one).

    Raises:
        ImportError: `tracking.tracker: bytetrack` without the `tracking` extra installed.
    """

    def __init__(self, cfg: VigilConfig, wall_clock: Callable[[], float] = time.time) -> None:
        self.tcfg = cfg.tracking
        self.cameras = [c.name for c in cfg.cameras]
        self.names: dict[int, str] = {}
        self._wall_clock = wall_clock
        self._enabled = dict.fromkeys(self.cameras, True)
        self._trackers = {c: make_tracker(self.tcfg.tracker, self.tcfg.track_lost_s) for c in self.cameras}
        self._objects: dict[str, ObjectLifecycle] = {}

    def _lifecycle(self) -> ObjectLifecycle:
        t = self.tcfg
        return ObjectLifecycle(self.names, min_hits=t.min_hits, update_interval_s=t.event_update_interval_s,
                               lost_s=t.track_lost_s, alerts=t.alerts)  # fmt: skip

    def add_camera(self, camera: str) -> None:
        """Track a camera added by a config reload (from its first frame, once a model serves)."""
        if camera in self._enabled:
            return
        self.cameras.append(camera)
        self._enabled[camera] = True
        self._trackers[camera] = make_tracker(self.tcfg.tracker, self.tcfg.track_lost_s)
        if self.names:
            self._objects[camera] = self._lifecycle()

    def remove_camera(self, camera: str, reason: str = RELOAD_REASON) -> list[ObjectEvent]:
        """Stop tracking a camera removed by a config reload.

        Returns:
            The `end` events of its announced objects (with `reason`).
        """
        if camera not in self._enabled:
            return []
        self.cameras.remove(camera)
        del self._enabled[camera], self._trackers[camera]
        lifecycle = self._objects.pop(camera, None)
        return lifecycle.end_all(reason) if lifecycle is not None else []

    def reconfigure(self, tracking: TrackingConfig, reason: str = RELOAD_REASON) -> list[tuple[str, ObjectEvent]]:
        """New `tracking` settings: every camera's objects end and its tracker starts afresh with them.

        Raises:
            ImportError: `tracker: bytetrack` without the `tracking` extra (nothing changed then).

        Returns:
            (camera, `end` event) for each announced object.
        """
        trackers = {c: make_tracker(tracking.tracker, tracking.track_lost_s) for c in self.cameras}
        ended = [(c, ev) for c, lc in self._objects.items() for ev in lc.end_all(reason)]
        self.tcfg, self._trackers = tracking, trackers
        if self.names:
            self._objects = {c: self._lifecycle() for c in self.cameras}
        return ended

    def on_model_ready(self, names: Mapping[int, str]) -> None:
        """A model with these labels serves now: with different labels every camera's objects start afresh."""
        if names != self.names:
            self.names = dict(names)
            self._objects = {c: self._lifecycle() for c in self.cameras}

    def process(self, record: ResultRecord) -> ResultRecord:
        """The record with track ids, this frame's object events and the counts after it.

        Args:
            record: One processed frame; its `received_mono_ns` is the instant the tracker and lifecycle use.

        Returns:
            A new record with `tracker_id` (`(N,)` int64, 0 for detections outside every track), `events` and
            `object_counts`; `record` itself when its camera is not tracked (no model yet, detection off).
        """
        cam = record.camera
        lifecycle = self._objects.get(cam)
        if lifecycle is None or not self._enabled.get(cam, True):
            return record
        mono, wall = record.received_mono_ns / 1e9, self._wall_clock()
        det = record.detections
        ids = self._trackers[cam].update(det, mono)
        tracked, tracked_ids = det, ids
        if not ids.all():  # ByteTrack leaves some detections out of every track: they are no object
            keep = ids > 0
            tracked = Detections(det.xyxy[keep], det.confidence[keep], det.class_id[keep])
            tracked_ids = ids[keep]
        frame = record.result.frame
        events = lifecycle.update(tracked, tracked_ids, (frame.width, frame.height), mono, wall)
        return dataclasses.replace(
            record, tracker_id=ids, events=tuple(events), object_counts=MappingProxyType(lifecycle.counts())
        )

    def hint(self, camera: str) -> TrackHint:
        """What the detector should look at next on this camera (sent to the worker when it changes).

        Active while any tracked object of the camera is present and not stationary; its boxes are the regions.
        """
        lifecycle = self._objects.get(camera)
        if lifecycle is None or not lifecycle.objects:
            return TrackHint(camera, False)
        boxes = tuple(tuple(o.box) for o in lifecycle.objects.values())
        return TrackHint(camera, True, boxes)  # type: ignore[arg-type]

    def zone_counts(self, camera: str) -> Mapping[str, Mapping[str, int]]:
        """Announced objects per zone of a camera, per label plus `all`: `{zone: {label: n}}`; empty without zones."""
        return MappingProxyType({})

    def set_detection(self, camera: str, enabled: bool) -> list[ObjectEvent]:
        """Detection switched on or off for a camera.

        Switching off ends its announced objects now: what can no longer be seen is not present.

        Returns:
            The `end` events (reason "detection switched off") when detection was on and goes off, else none.
        """
        if camera not in self._enabled:
            return []
        was_enabled, self._enabled[camera] = self._enabled[camera], enabled
        lifecycle = self._objects.get(camera)
        if enabled or not was_enabled or lifecycle is None:
            return []
        return lifecycle.end_all(DETECTION_OFF_REASON)

    def counts(self, camera: str) -> Mapping[str, int]:
        """Announced objects of a camera per label, plus `all`; empty before a model serves."""
        lifecycle = self._objects.get(camera)
        return MappingProxyType(lifecycle.counts()) if lifecycle is not None else MappingProxyType({})
