"""The worker pipe protocol between the supervisor (parent) and each inference worker.

What a worker reports (ready, failed, a failed frame, a backend change) and what the parent tells it (start
serving, stop, thresholds, detection per camera). One pipe per worker, never a shared queue (see
`app.inference.worker`); results themselves are `app.types.FrameResult`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BackendState:
    """Which runtime serves a worker's frames and why.

    Stats, /stats and MQTT show it, so a GPU that failed over to the CPU is visible from the dashboard, not only in the
    worker's log.
    """

    name: str
    providers: tuple[str, ...]
    reason: str
    failovers: int = 0

    def as_dict(self) -> dict:
        """JSON-ready form: name, providers (a list), reason and failover count."""
        return {"name": self.name, "providers": list(self.providers), "reason": self.reason,
                "failovers": self.failovers}  # fmt: skip


@dataclass(frozen=True, slots=True)
class WorkerReady:
    """The worker loaded and warmed up its model and is ready (or, in standby, waiting for StartServing).

    Attributes:
        worker_id: The worker's id, as in its WorkerSpec.
        backend: The runtime that serves its frames.
        names: Class id to label, from the model.
        imgsz: The model's input size, (height, width) pixels.
        warmup_ms: Total time of the warm-up runs, ms.
        pid: The worker's process id.
    """

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
    """Parent to worker: finish the current frame and exit; `reason` is logged."""

    reason: str = "shutdown"


@dataclass(frozen=True, slots=True)
class StartServing:
    """Blue-green: a warmed-up standby worker starts taking frames (the old one has just stopped)."""


@dataclass(frozen=True, slots=True)
class SetDetection:
    """Parent to worker: switch detection on or off for one camera (its frames are skipped while off)."""

    camera: str
    enabled: bool


@dataclass(frozen=True, slots=True)
class SetThresholds:
    """Parent to worker: new confidence and/or NMS IoU thresholds (0..1); None leaves one unchanged."""

    conf: float | None = None
    iou: float | None = None
