"""Messages that cross process and module boundaries.

Detections stay as numpy arrays inside the pipeline (cheap to pickle over the worker pipe) and become
JSON-ready dicts only at the sinks.
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
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0,), np.int32))

    def __len__(self) -> int:
        return int(self.confidence.shape[0])

    def to_list(self, names: Mapping[int, str]) -> list[dict]:
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


@dataclass(frozen=True, slots=True)
class StageTimings:
    preprocess_ms: float
    inference_ms: float
    postprocess_ms: float

    @property
    def total_ms(self) -> float:
        return self.preprocess_ms + self.inference_ms + self.postprocess_ms

    def as_dict(self) -> dict[str, float]:
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


# ---- worker control protocol (per-worker pipe, never a shared queue) ----


@dataclass(frozen=True, slots=True)
class BackendState:
    """Which runtime serves a worker's frames and why; stats, /stats and MQTT show it, so a GPU that
    failed over to the CPU is visible from the dashboard, not only in the worker's log."""

    name: str
    providers: tuple[str, ...]
    reason: str
    failovers: int = 0

    def as_dict(self) -> dict:
        return {"name": self.name, "providers": list(self.providers), "reason": self.reason,
                "failovers": self.failovers}  # fmt: skip


@dataclass(frozen=True, slots=True)
class WorkerReady:
    worker_id: int
    backend: BackendState
    names: dict[int, str]
    imgsz: tuple[int, int]
    warmup_ms: float
    pid: int


@dataclass(frozen=True, slots=True)
class WorkerFailed:
    """Fatal: the worker could not start (bad model, missing file). It exits after sending this."""

    worker_id: int
    error: str


@dataclass(frozen=True, slots=True)
class WorkerFrameError:
    """One frame failed; the worker goes on."""

    worker_id: int
    camera: str
    seq: int
    error: str


@dataclass(frozen=True, slots=True)
class BackendChanged:
    """The worker's backend changed while serving (failover to ONNX Runtime, or back to the GPU)."""

    worker_id: int
    backend: BackendState


@dataclass(frozen=True, slots=True)
class StopWorker:
    reason: str = "shutdown"


@dataclass(frozen=True, slots=True)
class StartServing:
    """Blue-green: a warmed-up standby worker starts taking frames (the old one has just stopped)."""


@dataclass(frozen=True, slots=True)
class SetDetection:
    camera: str
    enabled: bool


@dataclass(frozen=True, slots=True)
class SetThresholds:
    conf: float | None = None
    iou: float | None = None


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
    width: int = 0  # size of the newest frame as the source delivered it (before any downscale)
    height: int = 0
    resolution_changes: int = 0
