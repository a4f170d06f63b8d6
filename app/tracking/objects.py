"""Tracked-object lifecycle of one camera: `new`, `update` (only on meaningful change), `end`, `alert`.

Subscribers must never be flooded: an object is announced once it was seen `min_hits` times, `update`
goes out on a label change or at most every `update_interval_s`, `end` once it was unseen for `lost_s`.
Alerts fire once per object when a configured label was seen continuously for its minimum duration at
its minimum confidence.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from app.boxes import normalized_xyxy_list
from app.clock import iso_utc
from app.config import AlertRule
from app.types import Detections


@dataclass(slots=True)
class TrackedObject:
    """One tracked object's state across frames, keyed by the tracker's id.

    Positions are `box` (xyxy pixels of the last frame), times are monotonic s (`*_mono`) and wall-clock s since
    the epoch (`*_wall`); `announced` is set once it reached `min_hits` and its `new` event went out.
    """

    track_id: int
    label: str
    class_id: int
    confidence: float
    best_confidence: float
    box: list[float]
    first_seen_mono: float
    last_seen_mono: float
    first_seen_wall: float
    last_seen_wall: float
    hits: int = 1
    announced: bool = False
    last_update_mono: float = 0.0
    alerted: set[str] = field(default_factory=set)
    alert_since: dict[str, float] = field(default_factory=dict)  # rule label -> start of confident stretch

    def as_dict(self, frame_wh: tuple[int, int]) -> dict:
        """The object as events carry it; `frame_wh` (pixels) scales `box_normalized`."""
        w, h = frame_wh
        return {
            "id": self.track_id,
            "label": self.label,
            "class_id": self.class_id,
            "confidence": round(self.confidence, 4),
            "best_confidence": round(self.best_confidence, 4),
            "box": [round(v, 1) for v in self.box],
            "box_normalized": normalized_xyxy_list([self.box], w, h)[0],
            "first_seen": iso_utc(self.first_seen_wall),
            "last_seen": iso_utc(self.last_seen_wall),
            "duration_s": round(self.last_seen_mono - self.first_seen_mono, 2),
        }


ObjectEventType = Literal["new", "update", "end", "alert"]


@dataclass(frozen=True, slots=True)
class ObjectEvent:
    """Something happened to a tracked object.

    Attributes:
        type: `new` (announced after `min_hits` sightings), `update` (label changed, or periodic), `end`
            (unseen for `lost_s`, or detection switched off), `alert` (a rule held).
        obj: The object as `TrackedObject.as_dict` gives it (JSON-ready).
        reason: Why, for `update` ("label changed", "periodic"), `end` by command and `alert`; else "".
        rule: The alert rule that fired (`alert` only).
    """

    type: ObjectEventType
    obj: dict
    reason: str = ""
    rule: AlertRule | None = None


class ObjectLifecycle:
    """Turns tracker output into object events: `new`, periodic `update`, `alert` and `end`.

    Args:
        names: Class id to label.
        min_hits: Frames an object must be seen in before its `new` event (suppresses flicker).
        update_interval_s: Minimum time between `update` events of one object, s.
        lost_s: Time unseen after which an object ends, s.
        alerts: Rules that raise `alert` events.
    """

    def __init__(
        self,
        names: dict[int, str],
        *,
        min_hits: int = 2,
        update_interval_s: float = 5.0,
        lost_s: float = 2.0,
        alerts: list[AlertRule] | None = None,
    ) -> None:
        self.names = names
        self.min_hits = min_hits
        self.update_interval_s = update_interval_s
        self.lost_s = lost_s
        self.alerts = list(alerts or [])
        self.objects: dict[int, TrackedObject] = {}
        self._frame_wh = (1, 1)

    def update(
        self, det: Detections, track_ids: np.ndarray, frame_wh: tuple[int, int], mono: float, wall: float
    ) -> list[ObjectEvent]:
        """Fold one tracked frame into the objects and return the events it causes.

        Args:
            det: The frame's detections, `xyxy` `(N, 4)` float32 pixels.
            track_ids: `(N,)` tracker ids, aligned with `det`.
            frame_wh: Frame (width, height), pixels, for normalised boxes in events.
            mono: The frame's capture time, monotonic s.
            wall: The same instant, wall-clock s since the epoch.
        """
        events: list[ObjectEvent] = []
        self._frame_wh = frame_wh
        for box, conf, cid, tid in zip(det.xyxy.tolist(), det.confidence.tolist(), det.class_id.tolist(),
                                       track_ids.tolist()):  # fmt: skip
            label = self.names.get(cid, str(cid))
            obj = self.objects.get(tid)
            if obj is None:
                obj = TrackedObject(tid, label, cid, conf, conf, box, mono, mono, wall, wall)
                self.objects[tid] = obj
            else:
                obj.hits += 1
                obj.box, obj.confidence = box, conf
                obj.best_confidence = max(obj.best_confidence, conf)
                obj.last_seen_mono, obj.last_seen_wall = mono, wall
                if label != obj.label:
                    obj.label, obj.class_id = label, cid
                    if obj.announced:
                        obj.last_update_mono = mono
                        events.append(ObjectEvent("update", obj.as_dict(frame_wh), "label changed"))
            if not obj.announced and obj.hits >= self.min_hits:
                obj.announced = True
                obj.last_update_mono = mono
                events.append(ObjectEvent("new", obj.as_dict(frame_wh)))
            elif obj.announced and mono - obj.last_update_mono >= self.update_interval_s:
                obj.last_update_mono = mono
                events.append(ObjectEvent("update", obj.as_dict(frame_wh), "periodic"))
            events.extend(self._alerts(obj, conf, mono, frame_wh))
        for tid in [t for t, o in self.objects.items() if mono - o.last_seen_mono > self.lost_s]:
            obj = self.objects.pop(tid)
            if obj.announced:
                events.append(ObjectEvent("end", obj.as_dict(frame_wh)))
        return events

    def _alerts(self, obj: TrackedObject, conf: float, mono: float, frame_wh: tuple[int, int]) -> list[ObjectEvent]:
        out = []
        for rule in self.alerts:
            if rule.label in obj.alerted:
                continue
            if rule.label != obj.label or conf < rule.min_confidence:
                obj.alert_since.pop(rule.label, None)  # the continuous, confident stretch is broken
                continue
            since = obj.alert_since.setdefault(rule.label, mono)
            if mono - since >= rule.min_duration_s:
                obj.alerted.add(rule.label)
                out.append(ObjectEvent("alert", obj.as_dict(frame_wh), f"{rule.label} for {rule.min_duration_s} s",
                                       rule))  # fmt: skip
        return out

    def end_all(self, reason: str) -> list[ObjectEvent]:
        """Everything ends now (detection switched off: what we can no longer see is not 'present')."""
        events = [ObjectEvent("end", o.as_dict(self._frame_wh), reason) for o in self.objects.values() if o.announced]
        self.objects.clear()
        return events

    def counts(self) -> dict[str, int]:
        """Announced objects per label (every model label, 0 when none), plus `all`."""
        c = Counter(o.label for o in self.objects.values() if o.announced)
        out = {label: c.get(label, 0) for label in self.names.values()}
        out["all"] = sum(c.values())
        return out
