"""The worker supervisor: the serving inference worker, its side workers, and the handover between them.

It owns the serving worker, the side workers (a standby loading, a retiring one finishing its last frame)
and the blue-green handover between them.

    start() -> serving worker ──(dead | stalled)──> replace: stop it, back off, start a new one
                              ──(RecyclePolicy)───> recycle: standby loads at low priority while the old one
                                                    serves; switch at a result boundary; stop the old one

A replace or a recycle runs as its own task (one at a time), so the pipeline's periodic checks (capture
watchdog, stats ticks, systemd pings) go on while a standby loads for up to `worker.ready_timeout_s`.
Answers are read with `loop.add_reader` on each worker's own pipe and handed to a `WorkerListener`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

from app.config import VigilConfig
from app.inference.protocol import (
    BackendChanged,
    DetectAnswer,
    DetectNotRun,
    StartServing,
    StopWorker,
    WorkerFailed,
    WorkerFrameError,
    WorkerReady,
)
from app.inference.worker import WorkerHandle, WorkerSpec, WorkerStartError
from app.pipeline.records import SystemEventType
from app.supervisor.policy import RecyclePolicy, RestartBudget
from app.supervisor.procinfo import process_health, rss_mb, set_nice
from app.types import FrameResult

log = logging.getLogger(__name__)

# Niceness of a blue-green standby while it loads: low enough that the serving worker barely slows, high
# enough to finish loading in seconds (at 19 it starved behind ONNX Runtime's spinning threads).
STANDBY_NICE = 10
HEALTH_CHECK_S = 1.0  # RSS/fd sampling period of the serving worker


class WorkerListener(Protocol):
    """What the supervisor reports to the pipeline (all calls on the event loop)."""

    def on_worker_result(self, result: FrameResult) -> None:
        """An answer of the serving worker (or of a retiring one's last frame)."""
        ...

    def on_worker_frame_error(self, error: WorkerFrameError) -> None:
        """The worker could not process one frame (it goes on with the next)."""
        ...

    def on_worker_detect(self, answer: DetectAnswer | DetectNotRun) -> None:
        """A worker's answer to a detection request (a retiring worker's too)."""
        ...

    def on_worker_ready(self, ready: WorkerReady) -> None:
        """A worker became the serving one (first start, replacement or recycle)."""
        ...

    def on_supervisor_event(self, kind: SystemEventType, reason: str) -> None:
        """The supervisor restarted or recycled a worker, or the backend changed."""
        ...

    def on_give_up(self, reason: str) -> None:
        """Restarts exceeded the budget: the service should exit with code 3."""
        ...


class WorkerSupervisor:
    """Start, watch, replace and recycle the inference worker.

    Args:
        cfg: `worker.*` (timeouts, backoff) and `watchdog.*` (stall, restart budget, recycle rules).
        make_spec: `make_spec(worker_id, standby)` -> the spec of a new worker (model, rings, disabled cameras).
        listener: Receives results, errors, readiness and supervisor events.
        frames_waiting: True while some enabled camera has a frame newer than its last result (stall test).
    """

    def __init__(
        self,
        cfg: VigilConfig,
        make_spec: Callable[[int, bool], WorkerSpec],
        listener: WorkerListener,
        frames_waiting: Callable[[], bool],
    ) -> None:
        self.cfg = cfg
        self.make_spec = make_spec
        self.listener = listener
        self.frames_waiting = frames_waiting
        self.restart_budget = RestartBudget.from_config(cfg.watchdog, cfg.worker)
        self.recycle_policy = RecyclePolicy(cfg.watchdog)
        self.worker: WorkerHandle | None = None
        self.info: WorkerReady | None = None
        self.restarts = 0
        self.recycles = 0
        self.health: dict[str, float] = {}
        self._next_worker_id = 1
        self._ready_mono = 0.0
        self._waiting_since: float | None = None
        self._last_health_check = 0.0
        self._handover: tuple[WorkerHandle | None, asyncio.Event] | None = None
        self._side_workers: set[WorkerHandle] = set()  # standby or retiring: stop() stops them too
        self._job: asyncio.Task[None] | None = None  # the replace or recycle in progress
        self._stopping = False

    # ---- public -------------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """A replace or recycle is in progress."""
        return self._job is not None and not self._job.done()

    async def start(self) -> None:
        """Start a worker (the first one, or a replacement) and make it the serving one.

        While it loads it counts as a side worker, so a `stop()` meanwhile stops it too.

        Raises:
            WorkerStartError: It failed to load its model or was not ready within `worker.ready_timeout_s`.
        """
        loop = asyncio.get_running_loop()
        handle = WorkerHandle(self._spec(standby=False))
        handle.start()
        self._side_workers.add(handle)
        try:
            ready = await loop.run_in_executor(None, handle.wait_ready, self.cfg.worker.ready_timeout_s)
        except WorkerStartError:
            await self._stop_worker(handle, 1.0, "failed start")
            raise
        self._side_workers.discard(handle)
        self._adopt(handle, ready)

    def check(self) -> None:
        """One supervision step; the pipeline calls it every tick.

        Starts a replace for a missing, dead or stalled worker, or a recycle when the recycle policy says so.
        Never blocks: both run as a task.
        """
        if self._stopping or self.busy:
            return
        reason = None
        if self.worker is None:
            reason = "could not be started"
        elif not self.worker.alive():
            reason = f"died (exit code {self.worker.process.exitcode})"
        elif self._stalled():
            waited = time.monotonic() - max(self._waiting_since or 0.0, self._progress())
            reason = f"stalled (no result for {waited:.1f} s while frames waited)"
        if reason is not None:
            self._job = asyncio.create_task(self._replace(reason), name="worker-replace")
            return
        recycle = self._recycle_reason()
        if recycle is not None:
            self._job = asyncio.create_task(self._recycle(recycle), name="worker-recycle")

    def request_recycle(self, reason: str) -> bool:
        """Start a blue-green recycle now (e.g. a reloaded `model` section): a standby from `make_spec` takes over.

        Returns:
            True when it started; False while stopping, without a serving worker, or while a replace or
            recycle is in progress (a worker started after that one gets the current spec anyway).
        """
        if self._stopping or self.busy or self.worker is None:
            return False
        self._job = asyncio.create_task(self._recycle(reason), name="worker-recycle")
        return True

    def stats(self, model_path: str, last_system_event: dict | None) -> dict:
        """The stats document's `worker` section.

        Pid, model, input size, backend, restarts, recycles, health, the pipeline's last system event, RSS (MiB).
        """
        info = self.info
        return {
            "pid": info.pid if info else None,
            "model": model_path,
            "imgsz": list(info.imgsz) if info else None,
            "backend": info.backend.name if info else None,
            "providers": list(info.backend.providers) if info else [],
            "backend_reason": info.backend.reason if info else None,
            "backend_failovers": info.backend.failovers if info else 0,
            "restarts": self.restarts,
            "recycles": self.recycles,
            "health": self.health,
            "last_system_event": last_system_event,
            "rss_mb": rss_mb(info.pid) if info else None,
        }

    def send(self, msg: object) -> bool:
        """Send a message (thresholds, detection switch, request) to the serving worker; False when none serves."""
        return self.worker is not None and self.worker.send(msg)

    async def stop(self) -> None:
        """Cancel a replace/recycle in progress, then stop the serving and every side worker."""
        self._stopping = True
        if self._job is not None:
            self._job.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._job
        if self.worker is not None:
            await self._stop_worker(self.worker, self.cfg.worker.stop_timeout_s, "shutdown")
        for side in list(self._side_workers):  # a standby, a retiring or a starting worker cut short by the stop
            await self._stop_worker(side, 1.0, "shutdown during recycle")

    # ---- reading answers ----------------------------------------------------------------------

    def _adopt(self, handle: WorkerHandle, ready: WorkerReady) -> None:
        """Make a ready worker the one that serves (its answers are read from now on)."""
        self.worker, self.info = handle, ready
        self._ready_mono = time.monotonic()
        self.recycle_policy.reset(self._ready_mono)
        log.info(
            "worker %d ready (pid %d, %s %s: %s, warm-up %.0f ms)",
            ready.worker_id, ready.pid, ready.backend.name, list(ready.backend.providers), ready.backend.reason,
            ready.warmup_ms,
        )  # fmt: skip
        asyncio.get_running_loop().add_reader(handle.conn.fileno(), self._on_readable, handle)
        self.listener.on_worker_ready(ready)

    def _on_readable(self, handle: WorkerHandle) -> None:
        handover = self._handover
        retiring = handover is not None and handle is handover[0]
        try:
            while handle.conn.poll():
                msg = handle.conn.recv()
                if isinstance(msg, FrameResult):
                    self.listener.on_worker_result(msg)
                    if retiring and handover is not None:
                        handover[1].set()  # the old worker's last answer: the standby takes over now
                elif isinstance(msg, (DetectAnswer, DetectNotRun)):
                    self.listener.on_worker_detect(msg)
                elif isinstance(msg, WorkerFrameError):
                    self.listener.on_worker_frame_error(msg)
                elif isinstance(msg, BackendChanged):
                    self._on_backend_changed(handle, msg)
                elif isinstance(msg, WorkerFailed):
                    log.error("worker %d failed: %s", msg.worker_id, msg.error)
        except (EOFError, OSError):
            # The worker is gone; the next check() notices the dead process and replaces it.
            asyncio.get_running_loop().remove_reader(handle.conn.fileno())
            if retiring and handover is not None:
                handover[1].set()

    def _on_backend_changed(self, handle: WorkerHandle, msg: BackendChanged) -> None:
        if handle is not self.worker or self.info is None:
            return  # a retiring worker's last words; the serving one reports for itself
        self.info = replace(self.info, backend=msg.backend)
        self.listener.on_supervisor_event("backend", f"{msg.backend.name}: {msg.backend.reason}")

    # ---- watching -----------------------------------------------------------------------------

    def _stalled(self) -> bool:
        """A frame has waited stall_timeout_s and the worker finished no inference in that time.

        Measured from when the wait began, not from the last inference: after a camera outage, or with
        detection switched off, the last inference is old for good reasons, and the first new frame must
        not read as a stall.
        """
        now = time.monotonic()
        if not self.frames_waiting():
            self._waiting_since = None
            return False
        if self._waiting_since is None:
            self._waiting_since = now
        return now - max(self._waiting_since, self._progress()) > self.cfg.watchdog.stall_timeout_s

    def _progress(self) -> float:
        """The worker's last successful inference (shared-memory heartbeat), or when it became ready."""
        w = self.worker
        return max(w.last_inference_mono, self._ready_mono) if w is not None else self._ready_mono

    def _recycle_reason(self) -> str | None:
        """Sample the serving worker's health once a second and ask the recycle policy."""
        now = time.monotonic()
        if self.worker is None or now - self._last_health_check < HEALTH_CHECK_S:
            return None
        self._last_health_check = now
        pid = self.worker.process.pid
        assert pid is not None  # the serving worker was started before it was adopted
        health = process_health(pid)
        if health is None:
            return None
        self.health = health
        return self.recycle_policy.check(now, health["rss_mb"])

    # ---- replace and recycle ------------------------------------------------------------------

    async def _replace(self, reason: str) -> None:
        """Stop the failed worker, back off, start a new one (or give up past the restart budget)."""
        decision = self.restart_budget.record(time.monotonic())
        self.restarts += 1
        self.listener.on_supervisor_event("restart", f"worker {reason}")
        old, self.worker = self.worker, None
        if old is not None:
            # A stalled worker never reads its pipe: this ends in terminate/kill, off the event loop.
            await self._stop_worker(old, 0.5, "replaced")
        wd = self.cfg.watchdog
        if decision.give_up:
            log.error(
                "worker %s; %d restarts within %.0f s exceed watchdog.max_restarts=%d: exiting with code 3 "
                "so the service manager restarts Vigil",
                reason, decision.restarts_in_window, wd.restart_window_s, wd.max_restarts,
            )  # fmt: skip
            self.listener.on_give_up("too many worker restarts")
            return
        log.error("worker %s; restarting in %.1f s (restart %d)", reason, decision.delay_s, self.restarts)
        await asyncio.sleep(decision.delay_s)
        if self._stopping:
            return
        try:
            await self.start()
        except WorkerStartError as exc:
            log.error("inference worker failed to start: %s", exc)

    async def _recycle(self, reason: str) -> None:
        """Blue-green: start and warm up the new worker while the old one serves, switch, then stop the old."""
        loop = asyncio.get_running_loop()
        old = self.worker
        self.listener.on_supervisor_event("recycle", reason)
        handle = WorkerHandle(self._spec(standby=True))
        handle.start()
        self._side_workers.add(handle)
        standby_pid = handle.process.pid
        assert standby_pid is not None  # set by handle.start()
        # Load and warm up at a lower CPU priority, so the serving worker keeps its pace meanwhile.
        serving_nice = set_nice(standby_pid, STANDBY_NICE)
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
        self._handover = (old, switched)
        try:
            if old is None or not old.alive() or not old.send(StopWorker("recycled")):
                switched.set()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(switched.wait(), self.cfg.worker.stop_timeout_s)
        finally:
            self._handover = None
        if serving_nice is not None:
            set_nice(standby_pid, serving_nice)  # needs RLIMIT_NICE (LimitNICE= in the unit)
        handle.send(StartServing())
        self._side_workers.discard(handle)
        if old is not None:
            self._side_workers.add(old)
        self._adopt(handle, ready)
        self.recycles += 1
        if old is not None:
            await loop.run_in_executor(None, old.process.join, self.cfg.worker.stop_timeout_s)
            self._on_readable(old)  # anything it still had to say
            await self._stop_worker(old, 0.5, "recycled")

    async def _stop_worker(self, handle: WorkerHandle, timeout: float, reason: str) -> None:
        """Stop listening to it, then stop it (ask, terminate, kill) off the event loop."""
        loop = asyncio.get_running_loop()
        with contextlib.suppress(Exception):
            loop.remove_reader(handle.conn.fileno())
        await loop.run_in_executor(None, handle.stop, timeout, reason)
        self._side_workers.discard(handle)

    def _spec(self, standby: bool) -> WorkerSpec:
        spec = self.make_spec(self._next_worker_id, standby)
        self._next_worker_id += 1
        return spec
