"""Tracking and the object lifecycle as a pipeline stage.

Per camera, a result becomes a tracked result (track id per detection) plus object events (new, update, end, alert) that
every service receives.

It runs for every result, whatever services are configured, so JSON lines, the web side and MQTT all see the
same track ids, events and counts. MQTT only publishes them.

Before the tracker, the camera's object filters and masks (`cameras[].filters`, `cameras[].object_mask`) drop
detections: the record every service receives carries only the kept detections, with `tracker_id` aligned to them,
so a masked box appears nowhere (not in JSON lines, MQTT detections, the preview nor any event).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from types import MappingProxyType
from typing import Protocol

import numpy as np

from app.config import CameraConfig, ConfigError, TrackingConfig, VigilConfig
from app.inference.protocol import TrackHint
from app.pipeline.records import ResultRecord
from app.tracking.hints import build_hint, settle
from app.tracking.iou_tracker import IouTracker
from app.tracking.objects import ObjectEvent, ObjectLifecycle
from app.types import Detections
from app.zones.filters import ObjectFilter
from app.zones.labels import validate_labels
from app.zones.zones import CameraZones

log = logging.getLogger(__name__)

DETECTION_OFF_REASON = "detection switched off"
RELOAD_REASON = "config reloaded"
MODEL_CHANGED_REASON = "model labels changed"


class Tracker(Protocol):
    """A multi-object tracker of one camera."""

    def update(self, det: Detections, t: float, hold: Collection[int] = ()) -> np.ndarray:
        """Track the detections of one frame.

        Args:
            det: The frame's N detections, pixels.
            t: The frame's instant in seconds (monotonic).
            hold: Track ids to keep however long unmatched (stationary objects), until `forget`.

        Returns:
            `(N,)` int64 track id per detection (>= 1), 0 where the tracker keeps a detection out of every track.
        """
        ...

    def forget(self, track_ids: Iterable[int]) -> None:
        """Drop these tracks (their objects ended)."""
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
    """Per-camera object filters, tracker, object lifecycle and zones.

    A camera's frames are tracked once a model serves (`on_model_ready`) and while its detection is on;
    other records pass through unchanged (`tracker_id` None, no events, no counts).

    Args:
        cfg: The whole config (cameras with their zones, filters and masks, and the `tracking` keys).
        wall_clock: Wall-clock seconds for the objects' `first_seen`/`last_seen` (`time.time`; tests inject one).

    Raises:
        ImportError: `tracking.tracker: bytetrack` without the `tracking` extra installed.
    """

    def __init__(self, cfg: VigilConfig, wall_clock: Callable[[], float] = time.time) -> None:
        self.tcfg = cfg.tracking
        self.cameras = [c.name for c in cfg.cameras]
        self._cams: dict[str, CameraConfig] = {c.name: c for c in cfg.cameras}
        self._cfg = cfg
        self.names: dict[int, str] = {}
        self._wall_clock = wall_clock
        self._enabled = dict.fromkeys(self.cameras, True)
        self._trackers = {c: make_tracker(self.tcfg.tracker, self.tcfg.track_lost_s) for c in self.cameras}
        self._objects: dict[str, ObjectLifecycle] = {}
        self._filters: dict[str, ObjectFilter] = {}
        self._frame_wh: dict[str, tuple[int, int]] = {}
        self._hints: dict[str, TrackHint] = {}

    def _lifecycle(self, camera: str) -> ObjectLifecycle:
        t = self.tcfg
        cam = self._cams.get(camera)
        return ObjectLifecycle(
            self.names,
            min_hits=t.min_hits,
            update_interval_s=t.event_update_interval_s,
            lost_s=t.track_lost_s,
            alerts=t.alerts,
            zones=CameraZones(cam.zones if cam is not None else []),
            thresholds={label: f.threshold for label, f in cam.filters.items()} if cam is not None else {},
            stationary_after_s=t.stationary_after_s,
            stationary_iou=t.stationary_iou,
        )

    def _filter(self, camera: str) -> ObjectFilter | None:
        cam = self._cams.get(camera)
        return ObjectFilter(cam, self.names) if cam is not None else None

    def add_camera(self, camera: str) -> None:
        """Track a camera added by a config reload (from its first frame, once a model serves).

        Its zones, filters and masks come with `configure_cameras` (called right after, in the same step).
        """
        if camera in self._enabled:
            return
        self.cameras.append(camera)
        self._enabled[camera] = True
        self._trackers[camera] = make_tracker(self.tcfg.tracker, self.tcfg.track_lost_s)
        if self.names:
            self._objects[camera] = self._lifecycle(camera)

    def configure_cameras(self, cameras: Iterable[CameraConfig]) -> None:
        """The cameras' zones, filters and object masks from a reloaded config: applied from the next frame.

        Tracked objects go on: a camera whose zones changed re-derives every object's zones (it re-enters after
        `inertia` frames), new filters and masks apply to the next detections, new thresholds to objects not
        announced yet.
        """
        for cam in cameras:
            if cam.name not in self._enabled:
                continue
            self._cams[cam.name] = cam
            lifecycle = self._objects.get(cam.name)
            if lifecycle is not None:
                lifecycle.configure(CameraZones(cam.zones), {label: f.threshold for label, f in cam.filters.items()})
                self._filters[cam.name] = ObjectFilter(cam, self.names)

    def remove_camera(self, camera: str, reason: str = RELOAD_REASON) -> list[ObjectEvent]:
        """Stop tracking a camera removed by a config reload.

        Returns:
            The `end` events of its announced objects (with `reason`).
        """
        if camera not in self._enabled:
            return []
        self.cameras.remove(camera)
        del self._enabled[camera], self._trackers[camera]
        self._cams.pop(camera, None)
        self._filters.pop(camera, None)
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
            self._objects = {c: self._lifecycle(c) for c in self.cameras}
        return ended

    def on_model_ready(self, names: Mapping[int, str]) -> list[tuple[str, ObjectEvent]]:
        """A model with these labels serves now: with different labels every camera's objects start afresh.

        A label the config names that this model lacks (a zone's `labels`, a `filters` key, an alert rule) is
        logged as an error: `vigil run` refuses it before start when it can read the labels from the model file
        (`app.zones.labels`); a TensorRT engine or a model deployed later is only known here.

        Returns:
            (camera, `end` event) for every announced object when the labels changed (reason
            `model labels changed`), so zone counts and occupancy do not stay on objects no longer tracked;
            empty when the labels are the same (a worker restart or recycle keeps the tracks).
        """
        ended: list[tuple[str, ObjectEvent]] = []
        if names != self.names:
            ended = [(c, ev) for c, lc in self._objects.items() for ev in lc.end_all(MODEL_CHANGED_REASON)]
            if self.names:  # another model than before: its tracks start afresh too (the first model has none yet)
                self._trackers = {c: make_tracker(self.tcfg.tracker, self.tcfg.track_lost_s) for c in self.cameras}
            self.names = dict(names)
            self._objects = {c: self._lifecycle(c) for c in self.cameras}
            self._filters = {c: f for c in self.cameras if (f := self._filter(c)) is not None}
            try:
                validate_labels(self._cfg, self.names)
            except ConfigError as exc:
                log.error("config: %s: it never matches", exc)
        return ended

    def process(self, record: ResultRecord) -> ResultRecord:
        """The record with its detections filtered, track ids, this frame's object events and the counts after it.

        Args:
            record: One processed frame; its `received_mono_ns` is the instant the tracker and lifecycle use,
                its `result.regions` where the detector looked (stationary objects elsewhere do not age).

        Returns:
            A new record with the detections the camera's filters and masks keep, `tracker_id` (`(N,)` int64
            aligned with them, 0 for detections outside every track), `events` and `object_counts`; `record`
            itself when its camera is not tracked (no model yet, detection off).
        """
        cam = record.camera
        lifecycle = self._objects.get(cam)
        if lifecycle is None or not self._enabled.get(cam, True):
            return record
        frame = record.result.frame
        wh = (frame.width, frame.height)
        self._frame_wh[cam] = wh
        mono, wall = record.received_mono_ns / 1e9, self._wall_clock()
        det = record.detections
        filt = self._filters.get(cam)
        if filt is not None and len(det):
            kept = filt.apply(det, wh)
            if kept is not det:
                det = kept
                record = dataclasses.replace(record, result=dataclasses.replace(record.result, detections=kept))
        tracker = self._trackers[cam]
        ids = tracker.update(det, mono, lifecycle.held())
        tracked, tracked_ids = det, ids
        if not ids.all():  # ByteTrack leaves some detections out of every track: they are no object
            keep = ids > 0
            tracked = Detections(det.xyxy[keep], det.confidence[keep], det.class_id[keep])
            tracked_ids = ids[keep]
        events = lifecycle.update(tracked, tracked_ids, wh, mono, wall, record.result.regions or None)
        if lifecycle.ended:
            tracker.forget(lifecycle.ended)
        return dataclasses.replace(
            record, tracker_id=ids, events=tuple(events), object_counts=MappingProxyType(lifecycle.counts())
        )

    def hint(self, camera: str) -> TrackHint:
        """What the detector should look at next on this camera (sent to the worker when it changes).

        Returns:
            `active` while some tracked object is not stationary, `boxes` their predicted next boxes (constant
            velocity over the camera's detection interval, grown 10 %, snapped outward to 8 px; the last hint
            stays while the new boxes are within 8 px of it),
            `recheck_mono`/`recheck_boxes` when and where the stationary objects are due for a look
            (`app.tracking.hints`).
        """
        lifecycle = self._objects.get(camera)
        if lifecycle is None or not lifecycle.objects:
            hint = TrackHint(camera, False)
        else:
            cam = self._cams.get(camera)
            fps = cam.detect.fps if cam is not None else None
            interval = 1.0 / fps if fps else 0.2
            wh = self._frame_wh.get(camera, (1 << 16, 1 << 16))
            hint = build_hint(camera, lifecycle.objects.values(), wh, interval, self.tcfg.stationary_interval_s)
        self._hints[camera] = hint = settle(self._hints.get(camera), hint)
        return hint

    def zone_counts(self, camera: str) -> Mapping[str, Mapping[str, int]]:
        """Announced objects in each zone of a camera: `{zone: {label: n, ..., "all": n}}`.

        The labels are the zone's `labels`, else every model label (0 when none); empty without zones or before a
        model serves.
        """
        lifecycle = self._objects.get(camera)
        if lifecycle is None:
            return MappingProxyType({})
        return MappingProxyType({z: MappingProxyType(c) for z, c in lifecycle.zone_counts().items()})

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
        self._trackers[camera].forget(list(lifecycle.objects))
        return lifecycle.end_all(DETECTION_OFF_REASON)

    def counts(self, camera: str) -> Mapping[str, int]:
        """Announced objects of a camera per label, plus `all`; empty before a model serves."""
        lifecycle = self._objects.get(camera)
        return MappingProxyType(lifecycle.counts()) if lifecycle is not None else MappingProxyType({})
