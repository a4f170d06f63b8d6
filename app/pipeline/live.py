"""The live pipeline in the main process: the composition root.

    capture thread per camera -> FrameRing (shared memory) -> inference worker process (spawn)
        -> per-worker pipe -> asyncio loop here -> stages (tracking, object events) -> services

The asyncio loop is the main process's spine: MQTT, HTTP/WebRTC and JSON lines live in it as services.
Latency stays bounded by construction: the ring holds a few slots and the worker always takes the newest
frame, so a slow detector drops (and counts) frames instead of queueing them. Keeping the worker alive is
the supervisor's job (`app/supervisor/`); this module only wires the parts together and runs them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.capture.loop import CaptureLoop
from app.config import CameraConfig, ModelConfig, VigilConfig
from app.deploy.manager import DeploymentManager
from app.events.service import EventsService
from app.inference.protocol import (
    DetectAnswer,
    DetectNotRun,
    DetectOptions,
    SetDetection,
    SetThresholds,
    TrackHint,
    WorkerFrameError,
    WorkerReady,
)
from app.inference.worker import WorkerSpec, WorkerStartError
from app.monitoring import BudgetMonitor, build_monitors
from app.pipeline.errors import PipelineError
from app.pipeline.fanout import ResultFanout
from app.pipeline.records import ROUTINE_SYSTEM_EVENTS, SystemEvent, SystemEventType
from app.pipeline.requests import DetectionRequests, DetectOutcome
from app.pipeline.service import Service
from app.pipeline.stats import CameraStats, stats_document, status_lines
from app.reload.controller import ConfigReloader
from app.reload.source import ConfigSource
from app.ring import FrameRing
from app.supervisor.capture_watchdog import CaptureWatchdog
from app.supervisor.procinfo import rss_mb
from app.supervisor.sd_notify import SystemdNotifier, watchdog_pings
from app.supervisor.workers import WorkerSupervisor
from app.tracking.stage import TrackingStage
from app.types import CaptureCounters, FrameResult

log = logging.getLogger(__name__)

TICK_S = 0.25  # supervision period: stats rates, capture watchdog, worker checks, end of finite sources


@dataclass(frozen=True, slots=True)
class PipelineSummary:
    """What a finished run reports: per-camera stats (`CameraStats.as_dict`), supervisor counts, exit code."""

    cameras: dict[str, dict]
    worker_restarts: int
    worker_recycles: int
    exit_code: int  # 0, or 3 when worker restarts exceeded the budget
    duration_s: float
    stop_signal: int | None = None  # SIGINT or SIGTERM when a signal ended the run (`app.stop_signal.raise_stop`)


class LivePipeline:
    """Cameras, rings, the supervised inference worker and the services, run on one asyncio loop.

    Args:
        cfg: The whole config. `model.conf`/`model.iou` are updated by `set_thresholds` so a replacement
            worker starts with them.
        services: Receivers of results and events, in delivery order (JSON lines, MQTT, HTTP, bench recorders).
        duration_s: Stop after this many seconds (None: until a signal, `request_stop` or finite sources end).
        config_source: Where `cfg` was read from (file and `--set` overrides): SIGHUP and `reload_config` re-read
            it and apply the difference (`app.reload`); None: reloads are rejected.

    It implements `PipelineControl` for its services.
    """

    def __init__(
        self,
        cfg: VigilConfig,
        services: list[Service] | None = None,
        *,
        duration_s: float | None = None,
        config_source: ConfigSource | None = None,
    ):
        self.cfg = cfg
        self.events = EventsService(cfg)  # the recent-events store (`GET /api/events`): always there, first
        self.services = [self.events, *(services or [])]
        self.duration_s = duration_s
        self.rings: dict[str, FrameRing] = {}
        self.captures: dict[str, CaptureLoop] = {}
        self.stats: dict[str, CameraStats] = {}
        self.tracking = TrackingStage(cfg)
        self.fanout = ResultFanout(self.services, [self.tracking])
        self.supervisor = WorkerSupervisor(cfg, self._worker_spec, self, self._frames_waiting)
        self.requests = DetectionRequests(cfg.api, self.supervisor.send, self._serving_worker_id)
        self.deployments = DeploymentManager(cfg, self.supervisor, self.rings, self.detect, self.emit_system_event)
        # The deployed model survives restarts (unless model.path was edited); decided before the monitors are
        # built, so a drift baseline is checked against the model that will serve.
        self.deployments.startup()
        self._worker_models: dict[int, dict[str, str]] = {}  # worker id -> its model, as results name it
        self.monitors = build_monitors(cfg, self.stats)
        self.capture_watchdog = CaptureWatchdog(cfg.watchdog.capture_timeout_s, self._on_capture_restart)
        self.notifier = SystemdNotifier()
        self.system_events = 0
        self.last_system_event: dict | None = None
        self.exit_code = 0
        self._disabled: set[str] = set()
        self._hints: dict[str, TrackHint] = {}  # the last hint sent per camera (a new worker starts without)
        self._results = 0
        self._started = 0.0
        self._progress_mono = 0.0  # last result of any worker (health, systemd watchdog pings)
        self._stop = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.reloader = ConfigReloader(self, config_source)
        self._status_task: asyncio.Task | None = None
        self._reload_tasks: set[asyncio.Task] = set()
        self._previous_handlers: dict[int, Any] = {}  # signal -> its handler before the pipeline took it over
        self._stop_signal: int | None = None  # the signal that stopped the run, if one did

    # ---- the run, in boot order ---------------------------------------------------------------

    async def run(self) -> PipelineSummary:
        """Run until stopped; returns the summary. Signals SIGINT/SIGTERM stop it cleanly.

        Raises:
            PipelineError: The first worker could not start, or a service could not (e.g. a port in use).
        """
        self._loop = asyncio.get_running_loop()
        self._started = time.monotonic()
        self._install_signal_handlers()
        try:
            self._open_rings_and_captures()
            for service in self.services:
                await service.start(self)
            tasks: list[asyncio.Task] = []
            if await self._start_first_worker():
                self.restart_status_lines()
                tasks = [
                    asyncio.create_task(self._supervise(), name="supervise"),
                    asyncio.create_task(watchdog_pings(self.notifier, self._results_flowing), name="sd-watchdog"),
                ]
                if self.duration_s is not None:
                    self._loop.call_later(self.duration_s, self.request_stop, f"duration {self.duration_s} s reached")
                await self._stop.wait()
            tasks += [t for t in (self._status_task, *self._reload_tasks) if t is not None]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await self._shutdown()
        return PipelineSummary(
            cameras={n: s.as_dict() for n, s in self.stats.items()},
            worker_restarts=self.supervisor.restarts,
            worker_recycles=self.supervisor.recycles,
            exit_code=self.exit_code,
            duration_s=time.monotonic() - self._started,
            stop_signal=self._stop_signal,
        )

    async def _start_first_worker(self) -> bool:
        """Start the first worker unless a stop comes first; False when stopped meanwhile.

        A stop while the model loads (systemd stopping a service that is still starting) does not wait for the
        load: the starting worker is stopped with the rest (`supervisor.stop`). A start that failed because the
        stop signal reached the worker too (systemd and a terminal signal the whole group) is a stop, not an error.

        Raises:
            PipelineError: The worker could not start, and no stop was asked for.
        """
        if self._stop.is_set():
            return False
        start = asyncio.create_task(self.supervisor.start(), name="worker-start")
        stopped = asyncio.create_task(self._stop.wait(), name="stop-during-start")
        await asyncio.wait({start, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not start.done():
            start.cancel()
            await asyncio.gather(start, return_exceptions=True)
            return False
        try:
            start.result()
        except WorkerStartError as exc:
            if self._stop.is_set():
                log.info("the worker did not start (%s): stopping anyway", exc)
                return False
            raise PipelineError(f"inference worker failed to start: {exc}") from exc
        return True

    def _install_signal_handlers(self) -> None:
        assert self._loop is not None
        handlers = {signal.SIGINT: self._on_stop_signal, signal.SIGTERM: self._on_stop_signal}
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            previous = signal.getsignal(sig)
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                if sig == signal.SIGHUP:
                    self._loop.add_signal_handler(sig, self._on_sighup)
                else:
                    self._loop.add_signal_handler(sig, handlers[sig], sig)
                self._previous_handlers[sig] = previous

    def _on_stop_signal(self, sig: int) -> None:
        """SIGINT/SIGTERM: a clean stop, remembered in the summary (`stop_signal`)."""
        if self._stop_signal is None:  # also while shutting down: a bench must not take it as "done"
            self._stop_signal = sig
        self.request_stop(f"signal {signal.Signals(sig).name}")

    def _on_sighup(self) -> None:
        """SIGHUP: reload the config (a second one while a reload runs waits for it)."""
        task = asyncio.create_task(self.reloader.reload("SIGHUP"), name="config-reload")
        self._reload_tasks.add(task)
        task.add_done_callback(self._reload_tasks.discard)

    def restart_status_lines(self) -> None:
        """(Re)start the periodic status lines with `output.status_interval_s`."""
        if self._status_task is not None:
            self._status_task.cancel()
        self._status_task = asyncio.create_task(
            status_lines(self.cfg.output.status_interval_s, self.stats, self._model_status, self.notifier),
            name="status",
        )

    def _open_rings_and_captures(self) -> None:
        for cam in self.cfg.cameras:
            self.open_camera(cam, FrameRing.create(cam.ring_slots, cam.max_height, cam.max_width))

    def open_camera(self, cam: CameraConfig, ring: FrameRing) -> None:
        """Start a camera: its stats and its capture thread writing into `ring` (at start, and when reloaded)."""
        counters = CaptureCounters()
        self.stats[cam.name] = CameraStats(cam.name, counters)
        self.rings[cam.name] = ring
        loop = CaptureLoop(cam, ring, counters, write_lock=threading.Lock(), faults=self.cfg.debug.faults)
        self.captures[cam.name] = loop
        loop.start()

    def _worker_spec(self, worker_id: int, standby: bool, model: ModelConfig | None = None) -> WorkerSpec:
        faults = self.cfg.debug.faults
        if not standby and faults.standby_load_delay_s:
            faults = faults.model_copy(update={"standby_load_delay_s": 0.0})
        return WorkerSpec(
            worker_id=worker_id,
            model=model or self.cfg.model,
            rings=tuple((name, ring.spec) for name, ring in self.rings.items()),
            log_level=self.cfg.log_level,
            disabled_cameras=tuple(sorted(self._disabled)),
            faults=faults,
            standby=standby,
            request_max_share=self.cfg.api.max_share,
            detect=tuple((cam.name, cam.detect) for cam in self.cfg.cameras if cam.name in self.rings),
        )

    def _serving_worker_id(self) -> int | None:
        info = self.supervisor.info
        return info.worker_id if info is not None and self.supervisor.worker is not None else None

    async def _supervise(self) -> None:
        """The periodic checks, once per tick.

        Stats rates, the worker supervisor, the capture watchdog, the end of finite sources. Nothing here waits: a
        replace or recycle runs as the supervisor's own task.
        """
        while True:
            await asyncio.sleep(TICK_S)
            for s in self.stats.values():
                s.tick()
            if self._stop.is_set():
                return
            self.supervisor.check()
            self.capture_watchdog.check(self.captures, self.rings)
            self._check_monitors()
            if self.captures and all(c.finished for c in self.captures.values()):
                # Finite sources (files without loop): stop once the newest frame has been answered.
                done = all(self.stats[n].last_seq >= self.rings[n].latest_seq for n in self.rings)
                idle = all(time.monotonic() - s.last_result_mono > 2.0 for s in self.stats.values())
                if done or idle:
                    self.request_stop("all sources finished")

    def _model_status(self) -> str:
        """` | model yolov3-tiny-coco 416x416 onnxruntime`: what serves, quoted in every status line."""
        info = self.supervisor.info
        if info is None:
            return " | model loading"
        h, w = info.imgsz
        return f" | model {Path(self.cfg.model.path).stem} {w}x{h} {info.backend.name}"

    async def _shutdown(self) -> None:
        self.requests.close()
        for cap in self.captures.values():
            cap.stop()
        await self.supervisor.stop()
        for service in self.services:
            try:
                await service.stop()
            except Exception:
                log.exception("stopping %s failed", type(service).__name__)
        for cap in self.captures.values():
            cap.join(timeout=2.0)
        for ring in self.rings.values():
            ring.close()
            ring.unlink()
        loop = asyncio.get_running_loop()
        for sig, previous in self._previous_handlers.items():
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
                # asyncio leaves the default action behind; a SIGTERM from here to the exit must still be the
                # caller's (`vigil` raises Stopped, so a bench goes on to clean up instead of being killed)
                if previous is not None:
                    signal.signal(sig, previous)
        self._previous_handlers.clear()

    # ---- what the supervisor reports (WorkerListener) -----------------------------------------

    def on_worker_result(self, result: FrameResult) -> None:
        """Count the result and deliver it through the stages to the services (stale answers are dropped)."""
        now_ns = time.monotonic_ns()
        self._progress_mono = time.monotonic()
        self._results += 1
        if self._results == 1:
            self.notifier.ready(f"first result after {time.monotonic() - self._started:.1f} s")
        self.requests.record_busy("cameras", result.timings.total_ms)
        stats = self.stats.get(result.camera)
        if stats is None:
            return  # a camera removed by a config reload, answered before the worker detached its ring
        if result.frame.seq <= stats.last_seq:
            return  # a stale answer (e.g. from a worker being replaced): the newer one is already out
        dropped, _ = stats.record(result, now_ns)
        record = self.fanout.result(result, now_ns, dropped, self._worker_models.get(result.worker_id))
        published_ns = time.monotonic_ns()
        self._send_hint(result.camera)
        for monitor in self.monitors:
            try:
                monitor.observe(record, published_ns)
            except Exception:  # a broken monitor loses its figures, never the frame
                log.exception("%s.observe failed", type(monitor).__name__)

    def _send_hint(self, camera: str) -> None:
        """Tell the worker what the tracker wants looked at next on `camera`, when that changed."""
        hint = self.tracking.hint(camera)
        if self._hints.get(camera) != hint:
            self._hints[camera] = hint
            self.supervisor.send(hint)

    def on_worker_frame_error(self, error: WorkerFrameError) -> None:
        """Count a frame the worker could not process."""
        stats = self.stats.get(error.camera)
        if stats is None:
            return  # a camera removed by a config reload
        stats.errors += 1
        for monitor in self.monitors:
            monitor.observe_frame_error(error.camera)
        log.warning("worker %d: frame %d of %s failed: %s", error.worker_id, error.seq, error.camera, error.error)

    def on_worker_detect(self, answer: DetectAnswer | DetectNotRun) -> None:
        """A worker's answer to a detection request, to the request queue."""
        self._progress_mono = time.monotonic()
        self.requests.on_answer(answer)

    def on_worker_ready(self, ready: WorkerReady) -> None:
        """A worker serves now: stages and services learn its labels; requests handed to an old one move to it."""
        if ready.model is not None:
            self._worker_models[ready.worker_id] = ready.model.as_dict()
            for old in sorted(self._worker_models)[:-4]:  # a retiring worker's last results still find theirs
                del self._worker_models[old]
        self.fanout.model_ready(ready.names)
        self.requests.on_worker_ready(ready.worker_id)
        self._hints.clear()  # a new worker knows none: the next result of each camera sends its hint again
        for monitor in self.monitors:
            if (hook := getattr(monitor, "on_model_ready", None)) is not None:  # optional (ModelAware)
                try:
                    hook(ready)
                except Exception:
                    log.exception("%s.on_model_ready failed", type(monitor).__name__)

    def on_supervisor_event(self, kind: SystemEventType, reason: str) -> None:
        """A restart, recycle or backend change, to the log, the stats and every service."""
        self._system_event(kind, reason)

    def on_give_up(self, reason: str) -> None:
        """Too many restarts: exit 3 so the service manager restarts Vigil."""
        self.exit_code = 3
        self.request_stop(reason)

    def _on_capture_restart(self, camera: str, reason: str) -> None:
        self._system_event("capture_restart", reason, camera)

    def _system_event(self, kind: SystemEventType, reason: str, camera: str | None = None) -> None:
        self.emit_system_event(SystemEvent(kind, reason, camera))

    def emit_system_event(self, event: SystemEvent) -> None:
        """Log a system event, keep it as the last one for the stats, and hand it to every service."""
        self.system_events += 1
        self.last_system_event = event.as_dict()
        level = logging.INFO if event.type in ROUTINE_SYSTEM_EVENTS else logging.WARNING
        log.log(level, "%s%s: %s", event.type, f" ({event.camera})" if event.camera else "", event.reason)
        self.fanout.system_event(event)

    def _check_monitors(self) -> None:
        now = time.monotonic()
        for monitor in self.monitors:
            try:
                events = monitor.check(now)
            except Exception:
                log.exception("%s.check failed", type(monitor).__name__)
                continue
            for event in events:
                self.emit_system_event(event)

    def _frames_waiting(self) -> bool:
        """Some camera with detection on has a frame newer than its last result."""
        return any(
            ring.latest_seq > self.stats[name].last_seq
            for name, ring in self.rings.items()
            if name not in self._disabled
        )

    def _results_flowing(self) -> bool:
        return (
            bool(self._results) and time.monotonic() - self._progress_mono < self.cfg.watchdog.notify_max_result_age_s
        )

    # ---- control API (PipelineControl: MQTT commands, HTTP, tests) ----------------------------

    def request_stop(self, reason: str = "requested") -> None:
        """End the run (idempotent); `run` returns after a clean shutdown."""
        if not self._stop.is_set():
            log.info("stopping: %s", reason)
            self.notifier.stopping()
            self._stop.set()

    async def reload_config(self) -> dict:
        """Re-read the config source and apply what changed (`app.reload`): the answer of `POST /api/config/reload`.

        Returns:
            `{"status": "applied", "applied", "unchanged", "restart_required"}` or `{"status": "rejected", "error"}`.
        """
        return (await self.reloader.reload("HTTP")).as_dict()

    def _apply_model_change(self, new_model: ModelConfig) -> str:
        """A reloaded `model` section beyond the thresholds: a validated blue-green deployment of it, in the background.

        Returns:
            What happens: `deploying` (the outcome follows as a `model_deployed` or `model_rejected` event).
        """
        task = asyncio.create_task(self.deployments.deploy_config(new_model), name="config-reload-deploy")
        self._reload_tasks.add(task)
        task.add_done_callback(self._reload_tasks.discard)
        return "deploying"

    @property
    def stopping(self) -> bool:
        """`request_stop` was called (a reload is refused then)."""
        return self._stop.is_set()

    def set_thresholds(self, conf: float | None = None, iou: float | None = None) -> None:
        """Detector thresholds (0..1) for every camera, now and for any later worker."""
        if conf is not None:
            self.cfg.model.conf = conf  # so a replacement worker starts with it too
        if iou is not None:
            self.cfg.model.iou = iou
        self.supervisor.send(SetThresholds(conf, iou))

    def set_detection(self, camera: str, enabled: bool) -> None:
        """Detection on or off for one camera; off ends its tracked objects (`end` events to the services)."""
        (self._disabled.discard if enabled else self._disabled.add)(camera)
        self.supervisor.send(SetDetection(camera, enabled))
        for event in self.tracking.set_detection(camera, enabled):
            self.fanout.event(camera, event)

    def detection_enabled(self, camera: str) -> bool:
        """Whether detection is on for a camera."""
        return camera not in self._disabled

    def object_counts(self, camera: str) -> Mapping[str, int]:
        """Announced tracked objects of a camera per label, plus `all`."""
        return self.tracking.counts(camera)

    def zone_counts(self, camera: str) -> Mapping[str, Mapping[str, int]]:
        """Announced tracked objects in each zone of a camera: `{zone: {label: n, "all": n}}`."""
        return self.tracking.zone_counts(camera)

    def recent_events(
        self, camera: str | None = None, label: str | None = None, zone: str | None = None, limit: int = 50
    ) -> list[dict]:
        """Recent tracked objects newest first, filtered (`EventsService.recent`)."""
        return self.events.recent(camera, label, zone, limit)

    def event_snapshot(self, event_id: str) -> bytes | None:
        """An event's JPEG snapshot, None when unknown or none yet (`EventsService.snapshot`)."""
        return self.events.snapshot(event_id)

    @property
    def worker_restarts(self) -> int:
        """Workers replaced after dying or stalling, so far."""
        return self.supervisor.restarts

    @property
    def worker_recycles(self) -> int:
        """Blue-green recycles completed so far."""
        return self.supervisor.recycles

    @property
    def worker_info(self) -> WorkerReady | None:
        """The serving worker's ready message (pid, backend, labels, input size); None before the first."""
        return self.supervisor.info

    async def detect(self, image: np.ndarray, options: DetectOptions, timeout_s: float) -> DetectOutcome:
        """Detect on one image on the serving worker, ahead of camera frames within `api.max_share`.

        See `DetectionRequests.detect` for arguments and errors (QueueFull, DeadlineExceeded, DetectorUnavailable).
        """
        return await self.requests.detect(image, options, timeout_s)

    def check_detect_capacity(self) -> None:
        """Raise QueueFull (or DetectorUnavailable when stopping) if a detection request could not be queued now."""
        self.requests.check_capacity()

    def last_result_age_s(self) -> float | None:
        """Seconds since the newest result of any worker; None before the first."""
        return time.monotonic() - self._progress_mono if self._progress_mono else None

    def budget_report(self) -> dict:
        """`{"cameras": the stats document's budget section, "history": per camera recent points}`; empty when off."""
        for monitor in self.monitors:
            if isinstance(monitor, BudgetMonitor):
                return {"cameras": monitor.stats_section(), "history": monitor.history()}
        return {"cameras": {}, "history": {}}

    def stats_document(self) -> dict:
        """The stats message (schema 1): pipeline figures plus every service's own section."""
        worker = self.supervisor.stats(self.cfg.model.path, self.last_system_event)
        uptime_s = round(time.monotonic() - self._started, 1) if self._started else 0.0
        sections = {"api": self.requests.stats(), **self.fanout.stats_sections()}
        for monitor in self.monitors:
            sections[monitor.section] = monitor.stats_section()
        doc = stats_document(self.cfg.device_id, uptime_s, worker, rss_mb(None), self.stats.values(), sections)
        info = self.supervisor.info
        doc["model"] = info.model.as_dict() if info is not None and info.model is not None else None
        return doc

    def model_status(self) -> dict:
        """The serving model, the previous ones and the last deployment (`DeploymentManager.status`)."""
        return self.deployments.status()

    async def deploy_model(self, path: object, precision: object = None) -> dict:
        """Deploy a model blue-green, validated first (`DeploymentManager.deploy`; raises `DeployError`s)."""
        return await self.deployments.deploy(path, precision)

    async def rollback_model(self) -> dict:
        """Return to the previous model blue-green (`DeploymentManager.rollback`; raises `DeployError`s)."""
        return await self.deployments.rollback()
