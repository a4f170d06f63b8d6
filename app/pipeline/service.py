"""The one contract between the pipeline and what lives beside it in the main loop.

Those services are MQTT, HTTP/WebRTC, JSON lines and the bench recorders.

Every hook is called from the asyncio loop and must not block it: a service writes, enqueues or hands off.
One failing service never stops the pipeline or the other services (the fan-out logs and goes on).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np

    from app.config import VigilConfig
    from app.inference.protocol import DetectOptions, WorkerReady
    from app.pipeline.records import ResultRecord, SystemEvent
    from app.pipeline.requests import DetectOutcome
    from app.pipeline.stats import CameraStats
    from app.ring import FrameRing
    from app.tracking.objects import ObjectEvent


class PipelineControl(Protocol):
    """What a running pipeline offers its services.

    Its rings and stats, and the control API that MQTT commands and HTTP requests share.
    """

    @property
    def rings(self) -> Mapping[str, FrameRing]:
        """Camera name -> its shared-memory frame ring (read-only use: snapshots, preview)."""
        ...

    @property
    def stats(self) -> Mapping[str, CameraStats]:
        """Camera name -> its live counters."""
        ...

    def stats_document(self) -> dict:
        """The stats message (schema 1): pipeline figures plus every service's `stats_sections`."""
        ...

    @property
    def worker_info(self) -> WorkerReady | None:
        """The serving worker's ready message (pid, backend, labels, input size); None before the first."""
        ...

    def last_result_age_s(self) -> float | None:
        """Seconds since the newest result of any worker; None before the first."""
        ...

    def budget_report(self) -> dict:
        """The latency budget per camera and its recent history (`GET /api/budget`).

        Returns:
            `{"cameras": {camera: the stats document's budget entry}, "history": {camera: [{t, frame_age_p50,
            frame_age_p99, fps}, ...]}}` (wall-clock s, ms, frames/s; oldest point first).
        """
        ...

    def set_thresholds(self, conf: float | None = None, iou: float | None = None) -> None:
        """Change the detector's thresholds (0..1) for every camera, now and for any later worker."""
        ...

    def set_detection(self, camera: str, enabled: bool) -> None:
        """Switch detection for one camera; switching off ends its tracked objects (`end` events)."""
        ...

    def detection_enabled(self, camera: str) -> bool:
        """Whether detection is on for a camera (the one switch every control surface reads)."""
        ...

    def object_counts(self, camera: str) -> Mapping[str, int]:
        """Announced tracked objects of a camera per label, plus `all`."""
        ...

    def zone_counts(self, camera: str) -> Mapping[str, Mapping[str, int]]:
        """Announced tracked objects in each zone of a camera: `{zone: {label: n, "all": n}}`."""
        ...

    def recent_events(
        self, camera: str | None = None, label: str | None = None, zone: str | None = None, limit: int = 50
    ) -> list[dict]:
        """Recent tracked objects, one entry per object, newest first (`GET /api/events`, README "Events").

        Args:
            camera: Only this camera's (None: all).
            label: Only this label (None: all).
            zone: Only objects that are or were in this zone (None: all).
            limit: At most this many (>= 0).

        Returns:
            Entries as JSON dicts (`id`, `camera`, `label`, `track_id`, `start_time`, `end_time`, `top_score`,
            `score`, `current_zones`, `entered_zones`, `stationary`, `box`, `box_normalized`, `has_snapshot`,
            `snapshot_url`, `last_event`).
        """
        ...

    def event_snapshot(self, event_id: str) -> bytes | None:
        """The JPEG snapshot of a recent event's object; None when the id is unknown or it has none yet."""
        ...

    def request_stop(self, reason: str = "requested") -> None:
        """End the run (idempotent)."""
        ...

    def check_detect_capacity(self) -> None:
        """Raise QueueFull (503) if a detection request could not be queued now: checked before reading an upload."""
        ...

    async def reload_config(self) -> dict:
        """Re-read the config the service started from and apply what changed (README "Live config reload").

        Returns:
            `{"status": "applied", "applied", "unchanged", "restart_required"}`, or `{"status": "rejected",
            "error"}` (the error names the key; the running config stays).
        """
        ...

    async def detect(self, image: np.ndarray, options: DetectOptions, timeout_s: float) -> DetectOutcome:
        """Detect on one HxWx3 uint8 BGR image on the serving worker, within `timeout_s` s.

        Raises:
            RequestRejected: QueueFull (503), DeadlineExceeded (504) or DetectorUnavailable (503).
        """
        ...

    def model_status(self) -> dict:
        """The serving model (name, sha256, precision, backend, path), previous ones, the last deployment."""
        ...

    async def deploy_model(self, path: object, precision: object = None) -> dict:
        """Deploy a model from `model.deploy.models_dir` blue-green, validated before it takes traffic.

        Returns:
            `{"model", "validation", "handover_gap_ms", ...}` once the new model serves.

        Raises:
            app.deploy.errors.DeployError: InvalidDeployRequest/ModelPathError (400), DeployBusy (409) or
                DeployRejected (422); the serving model is untouched.
        """
        ...

    async def rollback_model(self) -> dict:
        """Return to the previous model the same way as `deploy_model` (same answer and errors)."""
        ...


@runtime_checkable
class Service(Protocol):
    """Something living in the main loop beside the pipeline.

    Order of calls: `start` once before the first worker starts; `on_model_ready` whenever a worker becomes
    the serving one (labels may change with a new model); per processed frame `on_event` for each object
    event the frame caused, then `on_result`; `on_system_event` whenever the supervisor acts; `stop` once at
    shutdown, after the workers stopped. `stats_sections` is read whenever a stats document is built.
    `apply_config` after a config reload changed sections of the (shared, now updated) config.
    """

    async def start(self, pipeline: PipelineControl) -> None:
        """Start serving (listen, connect, start tasks).

        Raises:
            PipelineError: The service cannot run (e.g. its port is in use); the pipeline does not start.
        """
        ...

    async def stop(self) -> None:
        """Stop serving and release everything (idempotent)."""
        ...

    def on_model_ready(self, names: Mapping[int, str]) -> None:
        """A worker serves now; `names` maps its class ids to labels."""
        ...

    def on_result(self, record: ResultRecord) -> None:
        """One processed frame (never blocks; the record is shared and immutable)."""
        ...

    def on_event(self, camera: str, event: ObjectEvent, record: ResultRecord | None) -> None:
        """A tracked-object event.

        `record` is the frame that caused it, None when none did (detection switched off).
        """
        ...

    def on_system_event(self, event: SystemEvent) -> None:
        """The supervisor restarted or recycled a worker, restarted a capture or changed backend."""
        ...

    def stats_sections(self) -> dict[str, dict]:
        """This service's sections of the stats document by key (`mqtt`; `webrtc` and `ws`), or none."""
        ...

    async def apply_config(self, cfg: VigilConfig, changed: frozenset[str]) -> None:
        """A config reload applied the top-level sections in `changed` to `cfg` (the config the service runs with).

        Cameras added or removed are in the pipeline's `rings` already (a removed camera's ring is closed right
        after this returns: let go of it here). A service replaced by the reload (MQTT, webhooks) is new instead.
        """
        ...


class ServiceBase:
    """A service that does nothing: subclass it and override the hooks you need."""

    async def start(self, pipeline: PipelineControl) -> None:
        """No-op."""

    async def stop(self) -> None:
        """No-op."""

    def on_model_ready(self, names: Mapping[int, str]) -> None:
        """No-op."""

    def on_result(self, record: ResultRecord) -> None:
        """No-op."""

    def on_event(self, camera: str, event: ObjectEvent, record: ResultRecord | None) -> None:
        """No-op."""

    def on_system_event(self, event: SystemEvent) -> None:
        """No-op."""

    def stats_sections(self) -> dict[str, dict]:
        """No section."""
        return {}

    async def apply_config(self, cfg: VigilConfig, changed: frozenset[str]) -> None:
        """No-op."""
