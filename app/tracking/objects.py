"""Tracked-object lifecycle of one camera: `new`, `update` (only on meaningful change), `end`, `alert`.

Subscribers must never be flooded: an object is announced once it was seen `min_hits` times and the median of
its recent scores reaches its label's `threshold`; `update` goes out on a label change, a zone change, becoming
stationary or moving again, loitering in a zone, or else at most every `update_interval_s`; `end` once it was
unseen for `lost_s`. A stationary object ages only in frames whose detection regions cover it (a detector that
did not look where it stands, because it ran on regions elsewhere or not at all, ages nothing) and ends only after
two such looks missed it; a moving one ages in every frame, as the detector is always pointed at its predicted
box. Alerts fire once per object when a
configured label was seen continuously for its minimum duration at its minimum confidence (and, with `zones`,
inside one of them).
"""

from __future__ import annotations

import statistics
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from app.boxes import normalized_xyxy_list
from app.clock import iso_utc
from app.config import AlertRule
from app.types import Box, Detections
from app.zones.stationary import Stillness
from app.zones.zones import CameraZones, ZonePresence

STATIONARY_MISSES = 2  # looks that miss a stationary object (over `lost_s`) before it ends
SCORE_WINDOW = 10  # recent scores whose median must reach the label's `threshold` before an object is announced


@dataclass(slots=True)
class TrackedObject:
    """One tracked object's state across frames, keyed by the tracker's id.

    Positions are `box` (xyxy pixels of the last frame) and `prev_box` (the sighting before, at `prev_mono`),
    times are monotonic s (`*_mono`) and wall-clock s since the epoch (`*_wall`); `announced` is set once it
    reached `min_hits` and its score threshold and its `new` event went out. `last_look_mono` is the last time the
    detector looked where it stands (seen or not).
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
    alerted: set[int] = field(default_factory=set)  # indexes of the alert rules that fired for it
    alert_since: dict[int, float] = field(default_factory=dict)  # rule index -> start of its confident stretch
    scores: deque[float] = field(default_factory=lambda: deque(maxlen=SCORE_WINDOW))
    zones: dict[str, ZonePresence] = field(default_factory=dict)
    current_zones: list[str] = field(default_factory=list)
    entered_zones: list[str] = field(default_factory=list)  # first-entered order
    still: Stillness | None = None
    prev_box: list[float] | None = None
    prev_mono: float = 0.0
    last_look_mono: float = 0.0
    misses: int = 0  # looks at where it stands that did not see it, since it was last seen

    @property
    def stationary(self) -> bool:
        """Its box has not moved for `tracking.stationary_after_s` (`app.zones.stationary`)."""
        return self.still is not None and self.still.stationary

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
            "current_zones": list(self.current_zones),
            "entered_zones": list(self.entered_zones),
            "stationary": self.stationary,
        }


ObjectEventType = Literal["new", "update", "end", "alert"]


@dataclass(frozen=True, slots=True)
class ObjectEvent:
    """Something happened to a tracked object.

    Attributes:
        type: `new` (announced after `min_hits` sightings at its label's score threshold), `update` (label
            changed, zones changed, stationary, moving, loitering, or periodic), `end` (unseen for `lost_s`, or
            at once: detection switched off, tracking reloaded, a model with other labels), `alert` (a rule held).
        obj: The object as `TrackedObject.as_dict` gives it (JSON-ready).
        reason: Why, for `update` ("label changed", "zones changed", "stationary", "moving" -- joined with ", "
            when several hold in one frame --, "loitering", "periodic"), `end` by command and `alert`; else "".
        rule: The alert rule that fired (`alert` only).
        zone: The zone of a `loitering` update; else "".
    """

    type: ObjectEventType
    obj: dict
    reason: str = ""
    rule: AlertRule | None = None
    zone: str = ""


class ObjectLifecycle:
    """Turns tracker output into object events: `new`, `update`, `alert` and `end`, with zones and stillness.

    Args:
        names: Class id to label.
        min_hits: Frames an object must be seen in before its `new` event (suppresses flicker).
        update_interval_s: Minimum time between periodic `update` events of one object, s (changes of label,
            zones or stillness, and loitering, go out at once).
        lost_s: Time unseen, in looks that covered it, after which an object ends, s.
        alerts: Rules that raise `alert` events.
        zones: The camera's zones (none: objects are in no zone).
        thresholds: Label -> least median of the recent scores for its objects to be announced (`filters`).
        stationary_after_s: An object still this long is stationary, s.
        stationary_iou: Least IoU with where its still stretch began for an object to count as not moved.
    """

    def __init__(
        self,
        names: dict[int, str],
        *,
        min_hits: int = 2,
        update_interval_s: float = 5.0,
        lost_s: float = 2.0,
        alerts: list[AlertRule] | None = None,
        zones: CameraZones | None = None,
        thresholds: Mapping[str, float] | None = None,
        stationary_after_s: float = 10.0,
        stationary_iou: float = 0.7,
    ) -> None:
        self.names = names
        self.min_hits = min_hits
        self.update_interval_s = update_interval_s
        self.lost_s = lost_s
        self.alerts = list(alerts or [])
        self.zones = zones if zones is not None else CameraZones([])
        self.thresholds = dict(thresholds or {})
        self.stationary_after_s = stationary_after_s
        self.stationary_iou = stationary_iou
        self.objects: dict[int, TrackedObject] = {}
        self.ended: list[int] = []  # track ids of the objects the last `update` ended (announced or not)
        self._frame_wh = (1, 1)

    def configure(self, zones: CameraZones, thresholds: Mapping[str, float]) -> None:
        """New zones and score thresholds of the camera (config reload); objects go on.

        When the zones changed, every object's zone standing starts afresh (it re-enters after `inertia`
        frames); its `entered_zones` history is kept only for zones that still exist.
        """
        if zones.zones != self.zones.zones:
            for obj in self.objects.values():
                obj.zones.clear()
                obj.current_zones = []
                obj.entered_zones = [z for z in obj.entered_zones if z in zones.names]
        self.zones, self.thresholds = zones, dict(thresholds)

    def update(
        self,
        det: Detections,
        track_ids: np.ndarray,
        frame_wh: tuple[int, int],
        mono: float,
        wall: float,
        regions: tuple[Box, ...] | None = None,
    ) -> list[ObjectEvent]:
        """Fold one tracked frame into the objects and return the events it causes.

        Args:
            det: The frame's detections, `xyxy` `(N, 4)` float32 pixels.
            track_ids: `(N,)` tracker ids, aligned with `det`.
            frame_wh: Frame (width, height), pixels, for normalised boxes in events.
            mono: The frame's capture time, monotonic s.
            wall: The same instant, wall-clock s since the epoch.
            regions: Where the detector looked, xyxy pixels; None or empty = the whole frame. A stationary
                object not seen ages toward `lost_s` only when its box centre is inside one of them (a moving
                one ages in every frame: the detector is always pointed at its predicted box).
        """
        events: list[ObjectEvent] = []
        self._frame_wh = frame_wh
        seen: set[int] = set()
        for box, conf, cid, tid in zip(det.xyxy.tolist(), det.confidence.tolist(), det.class_id.tolist(),
                                       track_ids.tolist()):  # fmt: skip
            seen.add(tid)
            events.extend(self._sighting(tid, box, conf, cid, frame_wh, mono, wall))
        self.ended = []
        for tid, obj in list(self.objects.items()):
            if tid in seen:
                continue
            if obj.stationary and not covered(obj.box, regions):
                continue  # the detector did not look where it stands: nothing is known, nothing ages
            obj.last_look_mono = mono
            obj.misses += 1
            # A stationary object is looked at only every `stationary_interval_s`: one missed look (a false
            # negative) must not end a parked car, so it ends after a second missed look.
            if mono - obj.last_seen_mono > self.lost_s and (obj.misses >= STATIONARY_MISSES or not obj.stationary):
                del self.objects[tid]
                self.ended.append(tid)
                if obj.announced:
                    events.append(ObjectEvent("end", obj.as_dict(frame_wh)))
        return events

    def held(self) -> list[int]:
        """Track ids of the stationary objects: the tracker keeps them however long unmatched (`Tracker.update`)."""
        return [tid for tid, obj in self.objects.items() if obj.stationary]

    def _sighting(self, tid: int, box: list[float], conf: float, cid: int, frame_wh: tuple[int, int], mono: float,
                  wall: float) -> list[ObjectEvent]:  # fmt: skip
        """One detection of track `tid`: the object's new state and the events it causes."""
        label = self.names.get(cid, str(cid))
        obj = self.objects.get(tid)
        reasons: list[str] = []
        if obj is None:
            obj = TrackedObject(tid, label, cid, conf, conf, box, mono, mono, wall, wall)
            obj.still = Stillness(list(box), mono)
            self.objects[tid] = obj
        else:
            obj.hits += 1
            obj.prev_box, obj.prev_mono = obj.box, obj.last_seen_mono
            obj.box, obj.confidence = box, conf
            obj.best_confidence = max(obj.best_confidence, conf)
            obj.last_seen_mono, obj.last_seen_wall = mono, wall
            if label != obj.label:
                obj.label, obj.class_id = label, cid
                reasons.append("label changed")
        obj.last_look_mono, obj.misses = mono, 0
        obj.scores.append(conf)
        if self.zones and (change := self.zones.update(obj.zones, obj.label, box, frame_wh, mono)):
            obj.current_zones = self.zones.current(obj.zones)
            obj.entered_zones += [z for z in change.entered if z not in obj.entered_zones]
            reasons.append("zones changed")
        assert obj.still is not None
        moved = obj.still.update(box, mono, self.stationary_after_s, self.stationary_iou)
        if moved is not None:
            reasons.append("stationary" if moved else "moving")
        events: list[ObjectEvent] = []
        if not obj.announced:
            if obj.hits >= self.min_hits and statistics.median(obj.scores) >= self.thresholds.get(obj.label, 0.0):
                obj.announced = True
                obj.last_update_mono = mono
                events.append(ObjectEvent("new", obj.as_dict(frame_wh)))
        elif reasons or mono - obj.last_update_mono >= self.update_interval_s:
            obj.last_update_mono = mono
            events.append(ObjectEvent("update", obj.as_dict(frame_wh), ", ".join(reasons) or "periodic"))
        if obj.announced:
            for zone in self.zones.loitering(obj.zones, mono):
                events.append(ObjectEvent("update", obj.as_dict(frame_wh), "loitering", zone=zone))
        events.extend(self._alerts(obj, conf, mono, frame_wh))
        return events

    def _alerts(self, obj: TrackedObject, conf: float, mono: float, frame_wh: tuple[int, int]) -> list[ObjectEvent]:
        out = []
        # Keyed by rule, not label: two rules on one label (in different zones, say) keep their own stretches.
        for i, rule in enumerate(self.alerts):
            if i in obj.alerted:
                continue
            if (
                rule.label != obj.label
                or conf < rule.min_confidence
                or (rule.zones is not None and not set(rule.zones) & set(obj.current_zones))
            ):
                obj.alert_since.pop(i, None)  # the continuous, confident stretch (in its zones) is broken
                continue
            since = obj.alert_since.setdefault(i, mono)
            if mono - since >= rule.min_duration_s:
                obj.alerted.add(i)
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

    def zone_counts(self) -> dict[str, dict[str, int]]:
        """Announced objects in each zone: `{zone: {label: n, ..., "all": n}}`.

        The labels are the zone's `labels` when it has some, else every model label (0 when none), as `counts`.
        """
        out: dict[str, dict[str, int]] = {}
        announced = [o for o in self.objects.values() if o.announced]
        for zone in self.zones.zones:
            c = Counter(o.label for o in announced if zone.name in o.current_zones)
            labels = zone.labels if zone.labels is not None else list(self.names.values())
            counts = {label: c.get(label, 0) for label in labels}
            counts["all"] = sum(c.values())
            out[zone.name] = counts
        return out


COVERED_FRACTION = 0.8  # of a box's area inside one region for the detector to have seen the object there


def covered(box: list[float], regions: tuple[Box, ...] | None) -> bool:
    """Whether the detector looked where a box stands (None/empty `regions`: the whole frame).

    Most of the box (`COVERED_FRACTION` of its area) must lie inside one region: a crop that holds a parked car's
    centre but cuts the car in half may well miss it, and that miss must not count towards ending it.
    """
    if not regions:
        return True
    area = max(box[2] - box[0], 1e-6) * max(box[3] - box[1], 1e-6)
    for r in regions:
        iw = min(box[2], r[2]) - max(box[0], r[0])
        ih = min(box[3], r[3]) - max(box[1], r[1])
        if iw > 0 and ih > 0 and iw * ih >= COVERED_FRACTION * area:
            return True
    return False
