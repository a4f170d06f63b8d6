"""What services receive: one frozen record per processed frame, and system events.

A record is shared by every service, so it is immutable: a service that wants another shape (MQTT's
`box_normalized`, the preview's `box_norm`) builds its own dict from it. Nothing one service does can change
what the next one sees.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from app.clock import iso_utc
from app.types import Detections, FrameResult

if TYPE_CHECKING:
    from app.tracking.objects import ObjectEvent

SystemEventType = Literal[
    "restart", "recycle", "capture_restart", "backend",  # the supervisor
    "latency_budget_exceeded", "latency_budget_recovered", "error_rate_exceeded", "error_rate_recovered",  # budget
    "prediction_drift", "prediction_drift_recovered",  # drift
    "model_deployed", "model_rejected",  # deployment
    "config_reloaded", "config_rejected",  # live reload
]  # fmt: skip
# What an operator asked for and got: logged at INFO (the others, something went wrong or recovered, at WARNING).
ROUTINE_SYSTEM_EVENTS: frozenset[SystemEventType] = frozenset({"config_reloaded", "model_deployed"})

_EMPTY: Mapping[str, int] = MappingProxyType({})
_NO_DETAILS: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class ResultRecord:
    """One processed frame on its way to the services.

    Attributes:
        result: The worker's answer: camera, `FrameMeta` (seq, pts, capture instants), `Detections` in pixels
            of the original frame, stage timings and the worker's pick/answer instants (monotonic ns).
        names: Class id -> label of the model that produced it.
        received_mono_ns: When the main process received the answer (`time.monotonic_ns()`).
        dropped_before: Frames of this camera captured since the previous result and never processed.
        tracker_id: `(N,)` int64 track id per detection, 0 where a tracker keeps a detection out of every
            track; None when no tracking stage ran.
        events: The object events this frame caused (new, update, end, alert), in order.
        object_counts: Announced tracked objects per label (plus `all`) after this frame; empty without
            tracking.
        model: The model of the worker that produced it (`ModelIdentity.as_dict`: name, sha256 prefix,
            precision, backend); None when unknown.
    """

    result: FrameResult
    names: Mapping[int, str]
    received_mono_ns: int
    dropped_before: int
    tracker_id: np.ndarray | None = None
    events: tuple[ObjectEvent, ...] = ()
    object_counts: Mapping[str, int] = field(default_factory=lambda: _EMPTY)
    model: Mapping[str, str] | None = None

    @property
    def camera(self) -> str:
        """The camera's configured name."""
        return self.result.camera

    @property
    def detections(self) -> Detections:
        """The detections, `(N, 4)` float32 xyxy pixels of the original frame."""
        return self.result.detections

    @property
    def frame_age_ms(self) -> float:
        """Capture to receipt in the main process, in milliseconds."""
        return (self.received_mono_ns - self.result.frame.captured_mono_ns) / 1e6

    def latency_ms(self) -> dict[str, float]:
        """Per-stage milliseconds plus `queue` (capture to pick) and `frame_age` (capture to receipt)."""
        r = self.result
        latency = r.timings.as_dict()
        latency["queue"] = round((r.picked_mono_ns - r.frame.captured_mono_ns) / 1e6, 2)
        latency["frame_age"] = round(self.frame_age_ms, 2)
        return latency

    def detections_list(self) -> list[dict]:
        """Detections as JSON-ready dicts (`class_id`, `label`, `confidence`, `box` in pixels).

        A fresh list per call; with `track_id` (None when untracked) once a tracking stage ran.
        """
        out = self.result.detections.to_list(self.names)
        if self.tracker_id is not None:
            for d, tid in zip(out, self.tracker_id.tolist()):
                d["track_id"] = tid or None
        return out

    def as_json(self) -> dict:
        """The JSON object `vigil run` prints per processed frame (a fresh dict per call)."""
        r = self.result
        return {
            "camera": r.camera,
            "seq": r.frame.seq,
            "frame": r.frame.index,
            "pts": round(r.frame.pts, 3),
            "captured_at": iso_utc(r.frame.captured_wall),
            "width": r.frame.width,
            "height": r.frame.height,
            "detections": self.detections_list(),
            "dropped_before": self.dropped_before,
            "latency_ms": self.latency_ms(),
            "model": dict(self.model) if self.model is not None else None,
            "motion": r.frame.motion,
            "regions": [list(box) for box in r.regions],
        }


@dataclass(frozen=True, slots=True)
class SystemEvent:
    """Something that happened to the appliance rather than in a scene.

    The supervisor's actions (worker restart or recycle, capture restart, backend change) and the operations
    layer's findings and actions (latency budget, error rate, prediction drift, model deployment, config reload).

    Attributes:
        type: What happened.
        reason: Why, for people.
        camera: The camera it concerns; None for appliance-wide events.
        at: Wall-clock time (`time.time()`, seconds).
        details: JSON-ready fields of this kind of event (e.g. `layer`, `p99_ms`, `budget_ms`), flat in every payload.
    """

    type: SystemEventType
    reason: str
    camera: str | None = None
    at: float = field(default_factory=time.time)
    details: Mapping[str, Any] = field(default_factory=lambda: _NO_DETAILS)

    def as_dict(self) -> dict:
        """`{"type", "reason", "camera", "at", **details}` as the stats document's `last_system_event` shows it."""
        return {"type": self.type, "reason": self.reason, "camera": self.camera, "at": self.at, **self.details}
