"""The worker pipe protocol between the supervisor (parent) and each inference worker.

What a worker reports (ready, failed, a failed frame, a backend change, a detection request's answer) and
what the parent tells it (start serving, stop, thresholds, detection per camera, detection requests). One
pipe per worker, never a shared queue (see `app.inference.worker`); results are `app.types.FrameResult`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from app.config import DetectConfig
from app.inference.shared_image import SharedImageSpec
from app.ring import RingSpec
from app.types import Detections, StageTimings


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
class ModelIdentity:
    """Which model a worker runs, as results and stats name it.

    Attributes:
        name: The model file's stem (``yolov3-tiny-coco``).
        sha256: Hex SHA-256 of the model file (64 characters).
        precision: TensorRT: the engine's precision; ONNX Runtime: the model's input dtype (``fp32``, ``fp16``).
        backend: The runtime serving it (``onnxruntime``, ``tensorrt``).
        path: The model file as configured.
    """

    name: str
    sha256: str
    precision: str
    backend: str
    path: str = ""

    def as_dict(self) -> dict:
        """The short JSON form every result carries: name, the first 12 hex of the SHA-256, precision, backend."""
        return {"name": self.name, "sha256": self.sha256[:12], "precision": self.precision, "backend": self.backend}


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
        model: The model it runs (file stem, SHA-256, precision, backend).
    """

    worker_id: int
    backend: BackendState
    names: dict[int, str]
    imgsz: tuple[int, int]
    warmup_ms: float
    pid: int
    model: ModelIdentity | None = None


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
class CanaryRequest:
    """Parent to a standby worker: run one canary frame before it may serve (deployment validation).

    Attributes:
        request_id: The parent's id; the answer carries it.
        image: Where the HxWx3 uint8 BGR pixels are (`app.inference.shared_image`).
    """

    request_id: int
    image: SharedImageSpec


@dataclass(frozen=True, slots=True)
class CanaryAnswer:
    """Standby worker to parent: a canary frame's detections, or why the model failed on it.

    Attributes:
        request_id: As in the CanaryRequest.
        worker_id: The standby that ran it.
        detections: xyxy pixels of the canary image, confidences, class ids; None when it failed.
        error: Why it failed (non-finite outputs, a decode error); empty when it passed.
    """

    request_id: int
    worker_id: int
    detections: Detections | None
    error: str = ""


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


@dataclass(frozen=True, slots=True)
class AttachRing:
    """Parent to worker (config reload): read this camera's ring too, from its newest frame on.

    A ring of a camera the worker already reads replaces it (the camera's ring size changed).
    """

    camera: str
    ring: RingSpec


@dataclass(frozen=True, slots=True)
class SetCameraDetect:
    """Parent to worker (start, config reload): how often and where the detector looks at one camera.

    Attributes:
        camera: The camera's name.
        detect: Its `cameras[].detect` section (fps cap, idle interval, regions on/off).
    """

    camera: str
    detect: DetectConfig


@dataclass(frozen=True, slots=True)
class TrackHint:
    """Parent to worker, after a camera's tracked result: what the tracker wants the detector to look at next.

    Sent only when it changes. Stationary objects do not make a camera active; they are looked at again
    from `recheck_mono` on (`tracking.stationary_interval_s`).

    Attributes:
        camera: The camera's name.
        active: A tracked object moves: keep detecting at `detect.fps` even without motion.
        boxes: Predicted xyxy boxes (frame pixels) of the moving tracked objects: detection regions.
        recheck_mono: `time.monotonic()` (s) when the stationary objects are due for a look; 0: none.
        recheck_boxes: The stationary objects' xyxy boxes (frame pixels).
    """

    camera: str
    active: bool
    boxes: tuple[tuple[float, float, float, float], ...] = ()
    recheck_mono: float = 0.0
    recheck_boxes: tuple[tuple[float, float, float, float], ...] = ()


@dataclass(frozen=True, slots=True)
class DetachRing:
    """Parent to worker (config reload): stop reading this camera's ring and unmap it; the parent unlinks it next."""

    camera: str


# ---- detection requests (`/api/detect`): parent to worker and back ---------------------------------------


@dataclass(frozen=True, slots=True)
class DetectOptions:
    """A request's own decode settings; None keeps the model's (`model.conf`, `model.iou`, ...).

    Attributes:
        conf: Keep scores strictly above this, 0..1.
        iou: NMS IoU threshold, 0..1.
        classes: Keep only these class ids (already resolved from labels by the parent).
        max_det: At most this many detections.
    """

    conf: float | None = None
    iou: float | None = None
    classes: tuple[int, ...] | None = None
    max_det: int | None = None


@dataclass(frozen=True, slots=True)
class DetectRequest:
    """Parent to worker: detect on one uploaded image, ahead of camera frames within `api.max_share`.

    The pixels travel in their own shared-memory segment (`app.inference.shared_image`), not through the
    pipe: a 6 MB image written into a 64 KiB pipe would block the parent's event loop until the worker,
    busy with a frame, reads it.

    Attributes:
        request_id: The parent's id; the answer carries it.
        image: Where the HxWx3 uint8 BGR pixels are.
        options: The request's decode settings.
        deadline_mono_ns: `time.monotonic_ns()` after which it must not be run (CLOCK_MONOTONIC is one
            clock for every process of the machine).
    """

    request_id: int
    image: SharedImageSpec
    options: DetectOptions
    deadline_mono_ns: int


@dataclass(frozen=True, slots=True)
class CancelDetect:
    """Parent to worker: the request's client left or its deadline passed; drop it if not yet started."""

    request_id: int


@dataclass(frozen=True, slots=True)
class DetectAnswer:
    """Worker to parent: a request's detections (pixels of the uploaded image) and stage times.

    Attributes:
        request_id: As in the DetectRequest.
        worker_id: The worker that ran it.
        detections: xyxy pixels, confidences, class ids.
        timings: Preprocess, inference and postprocess, ms.
        picked_mono_ns: When the worker took it (`time.monotonic_ns()`).
    """

    request_id: int
    worker_id: int
    detections: Detections
    timings: StageTimings
    picked_mono_ns: int


DetectNotRunReason = Literal["expired", "cancelled", "gone", "error"]


@dataclass(frozen=True, slots=True)
class DetectNotRun:
    """Worker to parent: a request was not run (past its deadline, cancelled, image gone) or failed."""

    request_id: int
    worker_id: int
    reason: DetectNotRunReason
    error: str = ""
