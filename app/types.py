"""Vigil's domain types: detections, frames and their timings, capture counters, and a worker's result.

Detections stay as numpy arrays inside the pipeline (cheap to pickle over the worker pipe) and become
JSON-ready dicts only at the sinks. The messages that steer a worker are in `app.inference.protocol`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class Detections:
    """N detections in pixels of the original frame."""

    xyxy: np.ndarray  # (N, 4) float32
    confidence: np.ndarray  # (N,) float32
    class_id: np.ndarray  # (N,) int32

    @classmethod
    def empty(cls) -> Detections:
        """No detections: `(0, 4)` float32 boxes, `(0,)` float32 confidences, `(0,)` int32 class ids."""
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0,), np.int32))

    def __len__(self) -> int:
        return int(self.confidence.shape[0])

    def to_list(self, names: Mapping[int, str]) -> list[dict]:
        """The detections as JSON-ready dicts, one per box.

        Keys: `class_id`, `label` (from `names`, else the id), `confidence` (4 decimals), `box` (xyxy pixels,
        1 decimal).
        """
        out = []
        for box, conf, cid in zip(self.xyxy.tolist(), self.confidence.tolist(), self.class_id.tolist()):
            label = names.get(cid, str(cid))
            out.append(
                {
                    "class_id": cid,
                    "label": label,
                    "confidence": round(conf, 4),
                    "box": [round(v, 1) for v in box],
                }
            )
        return out


Box = tuple[int, int, int, int]  # xyxy integer pixels of a frame: motion boxes and detection regions


@dataclass(frozen=True, slots=True)
class FrameMeta:
    """What capture knows about a frame; travels with the frame through the ring."""

    seq: int  # per-camera capture sequence number, strictly increasing from 1
    index: int  # frame index within the source (restarts when a file loops)
    pts: float  # presentation time in the source, seconds
    captured_mono_ns: int  # time.monotonic_ns() when the frame was read (system-wide clock)
    captured_wall: float  # time.time() at the same instant, for wall-clock timestamps
    height: int
    width: int
    written_mono_ns: int = 0  # time.monotonic_ns() once the ring held the frame (0: not from a ring)
    motion: bool | None = None  # the camera's motion detector saw motion (None: motion detection off)
    motion_boxes: tuple[Box, ...] = ()  # where, xyxy frame pixels (at most ring.MAX_MOTION_BOXES)


@dataclass(frozen=True, slots=True)
class StageTimings:
    """Per-frame stage durations, ms: letterbox/normalise, model run, decode/NMS."""

    preprocess_ms: float
    inference_ms: float
    postprocess_ms: float

    @property
    def total_ms(self) -> float:
        """Preprocess + inference + postprocess, ms."""
        return self.preprocess_ms + self.inference_ms + self.postprocess_ms

    def as_dict(self) -> dict[str, float]:
        """The three stages (`preprocess`, `inference`, `postprocess`), ms rounded to 2 decimals."""
        return {
            "preprocess": round(self.preprocess_ms, 2),
            "inference": round(self.inference_ms, 2),
            "postprocess": round(self.postprocess_ms, 2),
            "total": round(self.total_ms, 2),
        }


@dataclass(frozen=True, slots=True)
class FrameResult:
    """A worker's answer for one frame."""

    camera: str
    frame: FrameMeta
    detections: Detections
    timings: StageTimings
    picked_mono_ns: int  # when the worker took the frame from the ring
    done_mono_ns: int  # when decode/NMS finished
    worker_id: int
    # Where the detector looked, xyxy frame pixels: the whole frame `((0, 0, w, h),)` or crops around motion and
    # tracked objects. Detections outside them were not searched for in this frame (stationary objects keep).
    regions: tuple[Box, ...] = ()
    # Frames of this camera the worker passed over since its previous result: no motion and no other reason to look
    # (`cameras[].detect`). The rest of the sequence gap was overwritten unseen (`dropped`).
    skipped: int = 0


@dataclass(slots=True)
class CaptureCounters:
    """Counters a capture loop updates; read by stats (plain ints, single writer)."""

    frames: int = 0
    corrupt: int = 0
    reconnects: int = 0
    open_failures: int = 0
    last_frame_mono_ns: int = 0
    last_error: str = ""
    connected: bool = False
    ended: bool = False  # a file that does not loop reached its end (not a lost camera)
    width: int = 0  # size of the newest frame as the source delivered it (before any downscale)
    height: int = 0
    resolution_changes: int = 0
    motion_enabled: bool = False  # the camera's `motion.enabled` (set by its capture loop)
    motion_checked: int = 0  # frames through the motion detector
    motion_frames: int = 0  # ... that had motion
    lighting_changes: int = 0  # ... that were camera-level lighting changes (the background restarted)
    motion_ms_total: float = 0.0  # time in the motion detector, ms
