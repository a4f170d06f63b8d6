"""The live pipeline in the main process.

    capture thread per camera -> FrameRing (shared memory) -> inference worker process (spawn)
        -> per-worker pipe -> asyncio loop here -> stats + sinks

The asyncio loop is the main process's spine so later parts (MQTT, HTTP/WebRTC) live in the same loop.
Latency stays bounded by construction: the ring holds a few slots and the worker always takes the newest
frame, so a slow detector drops (and counts) frames instead of queueing them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np
import psutil

from app.capture.loop import CaptureLoop
from app.config import VigilConfig
from app.inference.protocol import (
    BackendChanged,
    SetDetection,
    SetThresholds,
    StartServing,
    StopWorker,
    WorkerFailed,
    WorkerFrameError,
    WorkerReady,
)
from app.inference.worker import WorkerHandle, WorkerSpec, WorkerStartError
from app.mqtt.topics import envelope
from app.pipeline.sinks import Sink, result_record
from app.pipeline.stats import CameraStats
from app.ring import FrameRing
from app.supervisor.sd_notify import SystemdNotifier
from app.types import CaptureCounters, FrameResult

log = logging.getLogger(__name__)

# Niceness of a blue-green standby while it loads: low enough that the serving worker barely slows, high
# enough to finish loading in seconds (at 19 it starved behind ONNX Runtime's spinning threads).
STANDBY_NICE = 10


class PipelineError(RuntimeError):
    pass


class Service(Protocol):
    """Something living in the main loop beside the pipeline (MQTT, later HTTP/WebRTC)."""

    async def start(self, pipeline: LivePipeline) -> None: ...

    def on_model_ready(self, names: dict[int, str]) -> None: ...

    def on_system_event(self, event: dict) -> None: ...

    async def stop(self) -> None: ...


@dataclass
class PipelineSummary:
    """What a finished run reports (used by `vigil bench` and tests)."""

    cameras: dict[str, dict]
    worker_restarts: int
    worker_recycles: int
    exit_code: int
    duration_s: float
    rss_mb: dict[str, list[float]] = field(default_factory=dict)
    frame_ages_ms: list[float] = field(default_factory=list)
    inference_ms: list[float] = field(default_factory=list)
    picked_to_received_ms: list[float] = field(default_factory=list)  # the worker's whole turn + IPC


class LivePipeline:
    def __init__(
        self,
        cfg: VigilConfig,
        sinks: list[Sink] | None = None,
        *,
        services: list[Service] | None = None,
        duration_s: float | None = None,
        max_results: int | None = None,
        record_samples: bool = False,
        rss_sample_s: float = 0.0,
    ) -> None:
        self.cfg = cfg
        self.sinks = list(sinks or [])
        self.services = list(services or [])
        self._disabled: set[str] = set()
        self.duration_s = duration_s
        self.max_results = max_results
        self._results = 0
        self.record_samples = record_samples
        self.rss_sample_s = rss_sample_s
        self.rings: dict[str, FrameRing] = {}
        self.captures: dict[str, CaptureLoop] = {}
        self.stats: dict[str, CameraStats] = {}
        self.worker: WorkerHandle | None = None
        self.worker_info: WorkerReady | None = None
        self.worker_restarts = 0
        self.names: dict[int, str] = {}
        self._next_worker_id = 1
        self._stop = asyncio.Event()
        self._stop_reason = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._samples_age: list[float] = []
        self._samples_inf: list[float] = []
        self._samples_turn: list[float] = []
        self._rss: dict[str, list[float]] = {"main": [], "worker": []}
        self._started = 0.0
        self._progress_mono = 0.0  # last result of any worker (systemd watchdog pings)
        self._waiting_since: float | None = None  # since when frames have waited for the worker
        self._worker_ready_mono = 0.0
        self._last_health_check = 0.0
        self._rss_samples: deque[tuple[float, float]] = deque()
        self._worker_health: dict = {}
        self.worker_recycles = 0
        self.recycle_times: list[float] = []  # monotonic instants of each switch to a new worker
        self._handover: tuple[WorkerHandle | None, WorkerHandle, asyncio.Event] | None = None
        self._side_workers: set[WorkerHandle] = set()  # standby or retiring: shutdown stops them too
        self.system_events = 0
        self.last_system_event: dict | None = None
        self._restarts: list[float] = []
        self.exit_code = 0
        self.notifier = SystemdNotifier()

    # ---- public -------------------------------------------------------------------------------

    def request_stop(self, reason: str = "requested") -> None:
        if not self._stop.is_set():
            self._stop_reason = reason
            log.info("stopping: %s", reason)
            self.notifier.stopping()
            self._stop.set()

    def set_thresholds(self, conf: float | None = None, iou: float | None = None) -> None:
        if conf is not None:
            self.cfg.model.conf = conf  # so a replacement worker starts with it too
        if iou is not None:
            self.cfg.model.iou = iou
        if self.worker is not None:
            self.worker.send(SetThresholds(conf, iou))

    def set_detection(self, camera: str, enabled: bool) -> None:
        (self._disabled.discard if enabled else self._disabled.add)(camera)
        if self.worker is not None:
            self.worker.send(SetDetection(camera, enabled))

    def snapshot(self) -> dict:
        return {
            "device_id": self.cfg.device_id,
            "uptime_s": round(time.monotonic() - self._started, 1) if self._started else 0.0,
            "worker": {
                "pid": self.worker_info.pid if self.worker_info else None,
                "model": self.cfg.model.path,
                "imgsz": list(self.worker_info.imgsz) if self.worker_info else None,
                "backend": self.worker_info.backend.name if self.worker_info else None,
                "providers": list(self.worker_info.backend.providers) if self.worker_info else [],
                "backend_reason": self.worker_info.backend.reason if self.worker_info else None,
                "backend_failovers": self.worker_info.backend.failovers if self.worker_info else 0,
                "restarts": self.worker_restarts,
                "recycles": self.worker_recycles,
                "health": self._worker_health,
                "last_system_event": self.last_system_event,
                "rss_mb": _rss_mb(self.worker_info.pid) if self.worker_info else None,
            },
            "main_rss_mb": _rss_mb(None),
            "cameras": [s.snapshot() for s in self.stats.values()],
        }

    def last_result_age_s(self) -> float | None:
        """Seconds since the newest result of any worker; None before the first."""
        return time.monotonic() - self._progress_mono if self._progress_mono else None

    def stats_document(self) -> dict:
        """The stats message (schema 1): pipeline figures plus every service's own section."""
        snap = self.snapshot()
        cameras = {}
        for c in snap["cameras"]:
            c = dict(c)
            cameras[c.pop("camera")] = c
        sections: dict[str, dict] = {}
        for service in self.services:
            section = getattr(service, "stats_section", None)
            if section is not None:
                key, value = section()
                sections[key] = value
        return envelope(
            self.cfg.device_id, None, uptime_s=snap["uptime_s"], cameras=cameras, worker=snap["worker"],
            main_rss_mb=snap["main_rss_mb"], **sections,
        )  # fmt: skip

    async def run(self) -> PipelineSummary:
        self._loop = asyncio.get_running_loop()
        self._started = time.monotonic()
        self._install_signal_handlers()
        try:
            self._open_rings_and_captures()
            for service in self.services:
                await service.start(self)
            await self._start_worker()
            tasks = [
                asyncio.create_task(self._supervise(), name="supervise"),
                asyncio.create_task(self._status(), name="status"),
                asyncio.create_task(self._notify_watchdog(), name="sd-watchdog"),
            ]
            if self.rss_sample_s > 0:
                tasks.append(asyncio.create_task(self._sample_rss(), name="rss"))
            if self.duration_s is not None:
                self._loop.call_later(self.duration_s, self.request_stop, f"duration {self.duration_s} s reached")
            await self._stop.wait()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await self._shutdown()
        return self._summary()

    # ---- setup --------------------------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        assert self._loop is not None
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                self._loop.add_signal_handler(sig, self.request_stop, f"signal {signal.Signals(sig).name}")

    def _open_rings_and_captures(self) -> None:
        for cam in self.cfg.cameras:
            ring = FrameRing.create(cam.ring_slots, cam.max_height, cam.max_width)
            self.rings[cam.name] = ring
            counters = CaptureCounters()
            self.stats[cam.name] = CameraStats(cam.name, counters)
            loop = CaptureLoop(cam, ring, counters, write_lock=threading.Lock(), faults=self.cfg.debug.faults)
            self.captures[cam.name] = loop
            loop.start()

    def _worker_spec(self, standby: bool = False) -> WorkerSpec:
        spec = WorkerSpec(
            worker_id=self._next_worker_id,
            model=self.cfg.model,
            rings=tuple((name, ring.spec) for name, ring in self.rings.items()),
            log_level=self.cfg.log_level,
            disabled_cameras=tuple(sorted(self._disabled)),
            faults=self.cfg.debug.faults,
            standby=standby,
        )
        self._next_worker_id += 1
        return spec

    async def _start_worker(self) -> None:
        assert self._loop is not None
        handle = WorkerHandle(self._worker_spec())
        handle.start()
        try:
            ready = await self._loop.run_in_executor(None, handle.wait_ready, self.cfg.worker.ready_timeout_s)
        except WorkerStartError as exc:
            handle.stop(1.0, "failed start")
            raise PipelineError(f"inference worker failed to start: {exc}") from exc
        self._adopt(handle, ready)

    def _adopt(self, handle: WorkerHandle, ready: WorkerReady) -> None:
        """Make a ready worker the one that serves (its answers are read from now on)."""
        assert self._loop is not None
        self.worker, self.worker_info, self.names = handle, ready, ready.names
        self._worker_ready_mono = time.monotonic()
        self._rss_samples.clear()
        log.info(
            "worker %d ready (pid %d, %s %s: %s, warm-up %.0f ms)",
            ready.worker_id, ready.pid, ready.backend.name, list(ready.backend.providers), ready.backend.reason,
            ready.warmup_ms,
        )  # fmt: skip
        self._loop.add_reader(handle.conn.fileno(), self._on_worker_readable, handle)
        for service in self.services:
            service.on_model_ready(ready.names)

    # ---- steady state -------------------------------------------------------------------------

    def _on_worker_readable(self, handle: WorkerHandle) -> None:
        handover = self._handover
        try:
            while handle.conn.poll():
                msg = handle.conn.recv()
                if isinstance(msg, FrameResult):
                    self._on_result(msg)
                    if handover is not None and handle is handover[0]:
                        handover[2].set()  # the old worker's last answer: the standby takes over now
                elif isinstance(msg, WorkerFrameError):
                    self.stats[msg.camera].errors += 1
                    log.warning("worker %d: frame %d of %s failed: %s", msg.worker_id, msg.seq, msg.camera, msg.error)
                elif isinstance(msg, BackendChanged):
                    self._on_backend_changed(handle, msg)
                elif isinstance(msg, WorkerFailed):
                    log.error("worker %d failed: %s", msg.worker_id, msg.error)
        except (EOFError, OSError):
            # The worker is gone; the supervisor notices the dead process and replaces it.
            assert self._loop is not None
            self._loop.remove_reader(handle.conn.fileno())
            if handover is not None and handle is handover[0]:
                handover[2].set()

    def _on_result(self, r: FrameResult) -> None:
        now_ns = time.monotonic_ns()
        self._progress_mono = time.monotonic()
        self._results += 1
        if self._results == 1:
            self.notifier.ready(f"first result after {time.monotonic() - self._started:.1f} s")
        if self.max_results is not None and self._results >= self.max_results:
            self.request_stop(f"{self.max_results} results reached")
        stats = self.stats[r.camera]
        if r.frame.seq <= stats.last_seq:
            return  # a stale answer (e.g. from a worker being replaced): the newer one is already out
        dropped, age = stats.record(r, now_ns)
        if self.record_samples:
            self._samples_age.append(age)
            self._samples_inf.append(r.timings.inference_ms)
            self._samples_turn.append((now_ns - r.picked_mono_ns) / 1e6)
        if self.sinks:
            record = result_record(r, self.names, now_ns, dropped)
            for sink in self.sinks:
                try:
                    sink.handle(record, r)
                except Exception:  # one broken sink must not stop the pipeline
                    log.exception("sink %s failed", type(sink).__name__)

    async def _supervise(self) -> None:
        """Replace a dead or stalled worker (with backoff) and end the run when every finite source is done."""
        while True:
            await asyncio.sleep(0.25)
            for s in self.stats.values():
                s.tick()
            if self._stop.is_set():
                return
            if self.worker is None:
                await self._replace_worker("could not be started")
            elif not self.worker.alive():
                await self._replace_worker(f"died (exit code {self.worker.process.exitcode})")
            elif self._stalled():
                waited = time.monotonic() - max(self._waiting_since or 0.0, self._worker_progress())
                await self._replace_worker(f"stalled (no result for {waited:.1f} s while frames waited)")
            else:
                await self._watch_worker_health()
            self._watch_captures()
            if self.captures and all(c.finished for c in self.captures.values()):
                # Finite sources (files without loop): stop once the newest frame has been answered.
                done = all(self.stats[n].last_seq >= self.rings[n].latest_seq for n in self.rings)
                idle = all(time.monotonic() - s.last_result_mono > 2.0 for s in self.stats.values())
                if done or idle:
                    self.request_stop("all sources finished")

    def _stalled(self) -> bool:
        """A frame has waited stall_timeout_s and the worker finished no inference in that time.

        Measured from when the wait began, not from the last inference: after a camera outage, or with
        detection switched off, the last inference is old for good reasons, and the first new frame must
        not read as a stall.
        """
        waiting = any(
            ring.latest_seq > self.stats[name].last_seq
            for name, ring in self.rings.items()
            if name not in self._disabled
        )
        now = time.monotonic()
        if not waiting:
            self._waiting_since = None
            return False
        if self._waiting_since is None:
            self._waiting_since = now
        return now - max(self._waiting_since, self._worker_progress()) > self.cfg.watchdog.stall_timeout_s

    def _worker_progress(self) -> float:
        """The worker's last successful inference (shared-memory heartbeat), or when it became ready."""
        w = self.worker
        return max(w.last_inference_mono, self._worker_ready_mono) if w is not None else self._worker_ready_mono

    async def _watch_worker_health(self) -> None:
        """Memory and age policies; a breach recycles the worker blue-green (no gap in results)."""
        now = time.monotonic()
        if self.worker is None or now - self._last_health_check < 1.0:
            return
        self._last_health_check = now
        wd = self.cfg.watchdog
        try:
            p = psutil.Process(self.worker.process.pid)
            rss = p.memory_info().rss / 2**20
            self._worker_health = {"rss_mb": round(rss, 1), "fds": p.num_fds(), "threads": p.num_threads()}
            gpu = gpu_memory_mb(p.pid)
            if gpu is not None:
                self._worker_health["gpu_mb"] = gpu
        except psutil.Error:
            return
        age = now - self._worker_ready_mono
        if age >= wd.rss_warmup_s:
            self._rss_samples.append((now, rss))
            while self._rss_samples and now - self._rss_samples[0][0] > wd.rss_window_s:
                self._rss_samples.popleft()
        reason = ""
        if wd.max_rss_mb and rss > wd.max_rss_mb:
            reason = f"RSS {rss:.0f} MB above watchdog.max_rss_mb={wd.max_rss_mb:g}"
        elif wd.max_rss_growth_mb_per_hour and len(self._rss_samples) >= 3:
            t = np.array([s[0] for s in self._rss_samples])
            span = t[-1] - t[0]
            if span >= min(60.0, wd.rss_window_s / 2):  # a slope over a few seconds is noise
                slope = float(np.polyfit(t - t[0], [s[1] for s in self._rss_samples], 1)[0]) * 3600
                if slope > wd.max_rss_growth_mb_per_hour:
                    reason = (
                        f"RSS growing {slope:.0f} MB/h (> {wd.max_rss_growth_mb_per_hour:g} MB/h), now {rss:.0f} MB"
                    )
        if not reason and wd.recycle_every_h and age >= wd.recycle_every_h * 3600:
            reason = f"periodic recycle after {age:.0f} s"
        if reason:
            await self._recycle(reason)

    async def _recycle(self, reason: str) -> None:
        """Blue-green: start and warm up the new worker while the old one serves, switch, then stop the old."""
        loop = asyncio.get_running_loop()
        old = self.worker
        self._system_event("recycle", reason)
        handle = WorkerHandle(self._worker_spec(standby=True))
        handle.start()
        self._side_workers.add(handle)
        # Load and warm up at a lower CPU priority, so the serving worker keeps its pace meanwhile.
        serving_nice = _set_nice(handle.process.pid, STANDBY_NICE)
        try:
            ready = await loop.run_in_executor(None, handle.wait_ready, self.cfg.worker.ready_timeout_s)
        except WorkerStartError as exc:
            self._side_workers.discard(handle)
            await loop.run_in_executor(None, handle.stop, 1.0, "failed start")
            log.error("recycle aborted, the old worker keeps serving: replacement failed to start: %s", exc)
            return
        # Switch at a result boundary: the old worker finishes the frame in hand, answers and exits; the
        # standby starts on the newest frame the moment that last answer (or the old one's exit) arrives.
        switched = asyncio.Event()
        self._handover = (old, handle, switched)
        try:
            if old is None or not old.alive() or not old.send(StopWorker("recycled")):
                switched.set()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(switched.wait(), self.cfg.worker.stop_timeout_s)
        finally:
            self._handover = None
        if serving_nice is not None:
            _set_nice(handle.process.pid, serving_nice)  # needs RLIMIT_NICE (LimitNICE= in the unit)
        handle.send(StartServing())
        self._side_workers.discard(handle)
        if old is not None:
            self._side_workers.add(old)
        self._adopt(handle, ready)
        self.worker_recycles += 1
        self.recycle_times.append(time.monotonic())
        if old is not None:
            await loop.run_in_executor(None, old.process.join, self.cfg.worker.stop_timeout_s)
            self._on_worker_readable(old)  # anything it still had to say
            await self._stop_worker(old, 0.5, "recycled")

    async def _stop_worker(self, handle: WorkerHandle, timeout: float, reason: str) -> None:
        """Stop listening to it, then stop it (ask, terminate, kill) off the event loop."""
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(handle.conn.fileno())
        await asyncio.get_running_loop().run_in_executor(None, handle.stop, timeout, reason)
        self._side_workers.discard(handle)

    def _watch_captures(self) -> None:
        """A camera that delivers nothing for capture_timeout_s gets a fresh capture thread; a read stuck
        in a driver cannot be interrupted, so the old thread is abandoned (it can never write again)."""
        timeout_ns = self.cfg.watchdog.capture_timeout_s * 1e9
        now = time.monotonic_ns()
        for name, cap in list(self.captures.items()):
            c = cap.counters
            if cap.finished or not c.connected or not c.last_frame_mono_ns:
                continue
            if now - c.last_frame_mono_ns > timeout_ns:
                self._system_event(
                    "capture_restart", f"no frame for {(now - c.last_frame_mono_ns) / 1e9:.1f} s", camera=name
                )
                cap.abandon()
                c.connected = False
                c.reconnects += 1
                c.last_frame_mono_ns = now  # the grace period starts again
                fresh = CaptureLoop(cap.camera, self.rings[name], c, write_lock=cap.write_lock)  # no faults again
                self.captures[name] = fresh
                fresh.start()

    def _on_backend_changed(self, handle: WorkerHandle, msg: BackendChanged) -> None:
        if handle is not self.worker or self.worker_info is None:
            return  # a retiring worker's last words; the serving one reports for itself
        self.worker_info = replace(self.worker_info, backend=msg.backend)
        self._system_event("backend", f"{msg.backend.name}: {msg.backend.reason}")

    def _system_event(self, kind: str, reason: str, camera: str | None = None) -> None:
        self.system_events += 1
        self.last_system_event = {"type": kind, "reason": reason, "camera": camera, "at": time.time()}
        log.warning("%s%s: %s", kind, f" ({camera})" if camera else "", reason)
        for service in self.services:
            try:
                service.on_system_event(dict(self.last_system_event))
            except Exception:
                log.exception("%s could not handle a system event", type(service).__name__)

    async def _replace_worker(self, reason: str) -> None:
        wd = self.cfg.watchdog
        now = time.monotonic()
        self._restarts = [t for t in self._restarts if now - t <= wd.restart_window_s] + [now]
        self.worker_restarts += 1
        self._system_event("restart", f"worker {reason}")
        old, self.worker = self.worker, None
        if old is not None:
            # A stalled worker never reads its pipe: this ends in terminate/kill, off the event loop.
            await self._stop_worker(old, 0.5, "replaced")
        if len(self._restarts) > wd.max_restarts:
            log.error(
                "worker %s; %d restarts within %.0f s exceed watchdog.max_restarts=%d: exiting with code 3 "
                "so the service manager restarts Vigil",
                reason, len(self._restarts), wd.restart_window_s, wd.max_restarts,
            )  # fmt: skip
            self.exit_code = 3
            self.request_stop("too many worker restarts")
            return
        backoff = min(
            self.cfg.worker.restart_backoff_s * 2 ** (len(self._restarts) - 1), self.cfg.worker.restart_backoff_max_s
        )
        log.error("worker %s; restarting in %.1f s (restart %d)", reason, backoff, self.worker_restarts)
        await asyncio.sleep(backoff)
        if self._stop.is_set():
            return
        try:
            await self._start_worker()
        except PipelineError as exc:
            log.error("%s", exc)

    async def _notify_watchdog(self) -> None:
        """systemd WATCHDOG=1 only while results flow: a hung loop or a dead pipeline stops the pings."""
        period = (self.notifier.watchdog_s or 0) / 2
        if period <= 0:
            return
        while True:
            await asyncio.sleep(period)
            if time.monotonic() - self._progress_mono < self.cfg.watchdog.notify_max_result_age_s and self._results:
                self.notifier.watchdog()

    async def _status(self) -> None:
        interval = self.cfg.output.status_interval_s
        if interval <= 0:
            return
        while True:
            await asyncio.sleep(interval)
            lines = [s.status_line() + self._model_status() for s in self.stats.values()]
            for line in lines:
                log.info("%s", line)
            self.notifier.status(" || ".join(lines))

    def _model_status(self) -> str:
        """` | model yolov3-tiny-coco 416x416 onnxruntime`: what serves, quoted in every status line."""
        info = self.worker_info
        if info is None:
            return " | model loading"
        h, w = info.imgsz
        return f" | model {Path(self.cfg.model.path).stem} {w}x{h} {info.backend.name}"

    async def _sample_rss(self) -> None:
        while True:
            await asyncio.sleep(self.rss_sample_s)
            self._rss["main"].append(_rss_mb(None) or 0.0)
            if self.worker_info is not None:
                self._rss["worker"].append(_rss_mb(self.worker_info.pid) or 0.0)

    # ---- teardown -----------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        loop = asyncio.get_running_loop()
        for cap in self.captures.values():
            cap.stop()
        if self.worker is not None:
            await self._stop_worker(self.worker, self.cfg.worker.stop_timeout_s, "shutdown")
        for side in list(self._side_workers):  # a recycle cut short by the stop
            await self._stop_worker(side, 1.0, "shutdown during recycle")
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
        for sink in self.sinks:
            with contextlib.suppress(Exception):
                sink.close()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)

    def _summary(self) -> PipelineSummary:
        return PipelineSummary(
            cameras={n: s.snapshot() for n, s in self.stats.items()},
            worker_restarts=self.worker_restarts,
            worker_recycles=self.worker_recycles,
            exit_code=self.exit_code,
            duration_s=time.monotonic() - self._started,
            rss_mb=self._rss,
            frame_ages_ms=self._samples_age,
            inference_ms=self._samples_inf,
            picked_to_received_ms=self._samples_turn,
        )


def gpu_memory_mb(pid: int) -> float | None:
    """GPU memory a process holds, through NVML when `nvidia-ml-py` and a driver are present; else None."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        try:
            total = 0
            for i in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(i)
                for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                    if proc.pid == pid and proc.usedGpuMemory:
                        total += proc.usedGpuMemory
            return round(total / 2**20, 1)
        finally:
            pynvml.nvmlShutdown()
    except pynvml.NVMLError:
        return None


def _set_nice(pid: int, value: int) -> int | None:
    """Set the niceness of every thread of a process; returns the previous value, or None if not permitted.

    Linux niceness is per thread: renicing only the main thread would leave ONNX Runtime's pool threads
    (created while the standby loaded) at the standby priority forever.
    """
    try:
        before = os.getpriority(os.PRIO_PROCESS, pid)
        tids = [t.id for t in psutil.Process(pid).threads()]
        for tid in tids:
            with contextlib.suppress(ProcessLookupError):
                os.setpriority(os.PRIO_PROCESS, tid, value)
        return before
    except (OSError, psutil.Error) as exc:
        log.debug("cannot renice %d to %d: %s", pid, value, exc)
        return None


def _rss_mb(pid: int | None) -> float | None:
    try:
        return round(psutil.Process(pid).memory_info().rss / 2**20, 1)
    except (psutil.Error, ValueError):
        return None
