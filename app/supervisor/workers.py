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
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from app.config import ModelConfig, VigilConfig
from app.inference.protocol import (
    BackendChanged,
    CanaryAnswer,
    CanaryRequest,
    DetectAnswer,
    DetectNotRun,
    StartServing,
    StopWorker,
    WorkerFailed,
    WorkerFrameError,
    WorkerReady,
)
from app.inference.shared_image import SharedImage
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
FIRST_RESULT_WAIT_S = 5.0  # how long a handover waits for the new worker's first result to measure the gap


class SupervisorBusy(RuntimeError):
    """A replace, recycle or deployment is already in progress (one at a time)."""


class StandbyRejected(Exception):
    """The standby failed to load or was rejected by validation; the serving worker was left untouched.

    Args:
        reason: Why, for people (the worker's own load error, or the validation's finding).
        validation: What validation found so far (JSON-ready), empty when it did not run.
    """

    def __init__(self, reason: str, validation: dict | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.validation = dict(validation or {})


@dataclass(frozen=True, slots=True)
class HandoverOutcome:
    """A completed blue-green handover.

    Attributes:
        ready: The new serving worker's ready message (pid, backend, labels, model identity).
        gap_ms: Old worker's last result to the new one's first, ms; None when no result came within
            FIRST_RESULT_WAIT_S (no camera frames) or the old worker had not answered yet.
    """

    ready: WorkerReady
    gap_ms: float | None


class StandbyProbe:
    """A ready standby worker that validation may send canary frames to before it serves.

    Its pipe is not read by the event loop yet, so answers are read here, off the loop.

    Args:
        handle: The standby's handle.
        ready: Its ready message (labels, model identity).
    """

    def __init__(self, handle: WorkerHandle, ready: WorkerReady) -> None:
        self.handle = handle
        self.ready = ready
        self._ids = itertools.count(1)

    async def canary(self, images: list[np.ndarray], timeout_s: float) -> list[CanaryAnswer]:
        """Run each HxWx3 uint8 BGR image on the standby, in order.

        Returns:
            One answer per image (detections, or the error the model gave on it).

        Raises:
            StandbyRejected: The standby died or did not answer within `timeout_s` s (per image).
        """
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self._run_all, images, timeout_s)

    def _run_all(self, images: list[np.ndarray], timeout_s: float) -> list[CanaryAnswer]:
        answers = []
        for image in images:
            shared = SharedImage(image)
            try:
                rid = next(self._ids)
                if not self.handle.send(CanaryRequest(rid, shared.spec)):
                    raise StandbyRejected("the standby worker exited during validation")
                answers.append(self._answer(rid, timeout_s))
            finally:
                shared.close()
        return answers

    def _answer(self, rid: int, timeout_s: float) -> CanaryAnswer:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if not self.handle.conn.poll(0.1):
                    if not self.handle.alive():
                        break
                    continue
                msg = self.handle.conn.recv()
            except (EOFError, OSError):
                break
            if isinstance(msg, CanaryAnswer) and msg.request_id == rid:
                return msg
        if self.handle.alive():
            raise StandbyRejected(f"the standby worker did not answer a canary frame within {timeout_s:.0f} s")
        raise StandbyRejected(f"the standby worker exited with code {self.handle.process.exitcode} during validation")


Validator = Callable[[StandbyProbe], Awaitable[None]]  # raises StandbyRejected to refuse the standby


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
        make_spec: `make_spec(worker_id, standby, model)` -> the spec of a new worker (rings, disabled cameras);
            `model` None means the configured one.
        listener: Receives results, errors, readiness and supervisor events.
        frames_waiting: True while some enabled camera has a frame newer than its last result (stall test).
    """

    def __init__(
        self,
        cfg: VigilConfig,
        make_spec: Callable[[int, bool, ModelConfig | None], WorkerSpec],
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
        self._job: asyncio.Task | None = None  # the replace, recycle or deployment in progress
        self._stopping = False
        self._last_result_mono = 0.0  # the newest FrameResult of any worker
        self._first_result: asyncio.Future[float] | None = None  # set by the new worker's first result

    # ---- public -------------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """A replace, recycle or deployment is in progress."""
        return self._job is not None and not self._job.done()

    async def deploy(
        self, model: ModelConfig, validate: Validator | None, on_switched: Callable[[WorkerReady], None] | None = None
    ) -> HandoverOutcome:
        """Blue-green to another model: the same handover as a recycle, after `validate` accepted the standby.

        The standby loads `model`, warms up and is validated while the serving worker goes on; only then does it
        take over at a result boundary. On any failure the standby is stopped and the serving worker is untouched.
        The handover runs as the supervisor's job: a caller that gives up waiting does not cut it short.

        Args:
            model: The model section the new worker runs.
            validate: Called with the ready standby; raises StandbyRejected to refuse it.
            on_switched: Called with the new worker's ready message right after it became the serving one
                (before any later recycle or restart could start one with the old model).

        Returns:
            The new worker's ready message and the result gap around the handover.

        Raises:
            SupervisorBusy: A replace, recycle or deployment is in progress, or the supervisor is stopping.
            StandbyRejected: The model failed to load, or validation refused it.
        """
        if self._stopping or self.busy:
            raise SupervisorBusy("a worker replacement, recycle or deployment is in progress")
        job = asyncio.create_task(self._blue_green("deploy", model, validate, on_switched), name="worker-deploy")
        self._job = job
        return await asyncio.shield(job)

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
                    self._last_result_mono = now = time.monotonic()
                    first = self._first_result
                    if first is not None and handle is self.worker and not first.done():
                        first.set_result(now)
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
        """Blue-green with the same model (a fresh process); a failed start leaves the old one serving."""
        self.listener.on_supervisor_event("recycle", reason)
        try:
            await self._blue_green("recycle", None, None)
        except StandbyRejected as exc:
            log.error("recycle aborted, the old worker keeps serving: replacement failed to start: %s", exc.reason)

    async def _blue_green(
        self,
        why: str,
        model: ModelConfig | None,
        validate: Validator | None,
        on_switched: Callable[[WorkerReady], None] | None = None,
    ) -> HandoverOutcome:
        """Start a standby, wait until it is ready, validate it, switch at a result boundary, stop the old one.

        Raises:
            StandbyRejected: The standby failed to load, was not ready in time, or `validate` refused it; it is
                stopped and the serving worker was never touched.
        """
        loop = asyncio.get_running_loop()
        handle = WorkerHandle(self._spec(standby=True, model=model))
        handle.start()
        self._side_workers.add(handle)
        standby_pid = handle.process.pid
        assert standby_pid is not None  # set by handle.start()
        # Load and warm up at a lower CPU priority, so the serving worker keeps its pace meanwhile.
        serving_nice = set_nice(standby_pid, STANDBY_NICE)
        try:
            ready = await loop.run_in_executor(None, handle.wait_ready, self.cfg.worker.ready_timeout_s)
            if validate is not None:
                await validate(StandbyProbe(handle, ready))
        except BaseException as exc:  # refused, failed, cut short by stop(), or a bug in the validation
            await self._stop_worker(handle, 1.0, f"{why} refused")
            if isinstance(exc, WorkerStartError):
                raise StandbyRejected(str(exc)) from exc
            if isinstance(exc, Exception) and not isinstance(exc, StandbyRejected):
                log.exception("validation of the standby failed")
                raise StandbyRejected(f"validation failed: {type(exc).__name__}: {exc}") from exc
            raise
        old = self.worker
        # Switch at a result boundary: the old worker finishes the frame in hand, answers and exits; the
        # standby starts on the newest frame the moment that last answer (or the old one's exit) arrives.
        switched = asyncio.Event()
        self._handover = (old, switched)
        try:
            if old is None or not old.alive() or not old.send(StopWorker(f"{why}: handing over")):
                switched.set()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(switched.wait(), self.cfg.worker.stop_timeout_s)
        finally:
            self._handover = None
        last_old_result = self._last_result_mono
        if serving_nice is not None:
            set_nice(standby_pid, serving_nice)  # needs RLIMIT_NICE (LimitNICE= in the unit)
        first = self._first_result = loop.create_future()
        handle.send(StartServing())
        self._side_workers.discard(handle)
        if old is not None:
            self._side_workers.add(old)
        self._adopt(handle, ready)
        if on_switched is not None:
            on_switched(ready)
        if why == "recycle":
            self.recycles += 1
        if old is not None:
            await loop.run_in_executor(None, old.process.join, self.cfg.worker.stop_timeout_s)
            self._on_readable(old)  # anything it still had to say
            await self._stop_worker(old, 0.5, why)
        gap_ms = None
        if why != "recycle":  # a recycle does not wait for it: the job would hold off replacements meanwhile
            with contextlib.suppress(asyncio.TimeoutError):
                first_new = await asyncio.wait_for(first, FIRST_RESULT_WAIT_S)
                if last_old_result:
                    gap_ms = round((first_new - last_old_result) * 1000.0, 1)
        self._first_result = None
        return HandoverOutcome(ready, gap_ms)

    async def _stop_worker(self, handle: WorkerHandle, timeout: float, reason: str) -> None:
        """Stop listening to it, then stop it (ask, terminate, kill) off the event loop."""
        loop = asyncio.get_running_loop()
        with contextlib.suppress(Exception):
            loop.remove_reader(handle.conn.fileno())
        await loop.run_in_executor(None, handle.stop, timeout, reason)
        self._side_workers.discard(handle)

    def _spec(self, standby: bool, model: ModelConfig | None = None) -> WorkerSpec:
        spec = self.make_spec(self._next_worker_id, standby, model)
        self._next_worker_id += 1
        return spec
