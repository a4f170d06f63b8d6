"""Detection requests in the main process: a bounded queue with deadlines in front of the serving worker.

    /api/detect ──> DetectionRequests.detect(image, options, timeout_s)
        waiting (<= api.queue_size; full -> 503 QueueFull)
        ──> at most WORKER_WINDOW sent to the serving worker (its DetectorShare puts them before frames)
        <── DetectAnswer / DetectNotRun ──> the caller's future

Every request has a deadline: one that passes it while waiting or at the worker is answered 504 at that
moment and never run (the worker is told to drop it, and drops expired ones itself). A caller that goes away
cancels its request the same way. Requests handed to a worker that is then replaced or recycled go back to
the front of the queue for the next one. The pixels travel in a shared-memory segment per request
(`app.inference.shared_image`), unlinked when the request ends, whichever way.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from app.config import ApiConfig
from app.inference.protocol import CancelDetect, DetectAnswer, DetectNotRun, DetectOptions, DetectRequest
from app.inference.shared_image import SharedImage
from app.types import Detections, StageTimings

log = logging.getLogger(__name__)

# Requests handed to the worker ahead of time: one in work and the next ready, so the worker never waits for
# a round trip through this loop; more would only move the queue to where deadlines cannot be kept.
WORKER_WINDOW = 2
SHARE_WINDOW_S = 30.0  # detector-share figures cover this much recent time
LATENCY_SAMPLES = 1000  # served requests kept for the latency percentiles


class RequestRejected(Exception):
    """A request that was not answered with detections.

    Attributes:
        status: The HTTP status it maps to (503 or 504: the only 5xx the API documents).
        reason: For the caller.
        retry_after_s: The `Retry-After` hint (s) for 503, else None.
    """

    status = 503

    def __init__(self, reason: str, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s


class QueueFull(RequestRejected):
    """`api.queue_size` requests already wait (503 with Retry-After)."""


class DeadlineExceeded(RequestRejected):
    """The deadline passed before the request was answered (504); it was not run, or its answer came too late."""

    status = 504


class DetectorUnavailable(RequestRejected):
    """The detector failed on this image, or the service is stopping (503)."""


@dataclass(frozen=True, slots=True)
class DetectOutcome:
    """A served request.

    Attributes:
        detections: xyxy pixels of the uploaded image, confidences, class ids.
        timings: Preprocess, inference and postprocess in the worker, ms.
        queue_ms: From `detect()` to the worker taking it, ms.
        total_ms: From `detect()` to the answer, ms.
        worker_id: The worker that ran it.
    """

    detections: Detections
    timings: StageTimings
    queue_ms: float
    total_ms: float
    worker_id: int

    def latency_ms(self) -> dict[str, float]:
        """`{"queue", "preprocess", "inference", "postprocess", "total"}`, ms rounded to 2 decimals."""
        t = self.timings
        return {
            "queue": round(self.queue_ms, 2), "preprocess": round(t.preprocess_ms, 2),
            "inference": round(t.inference_ms, 2), "postprocess": round(t.postprocess_ms, 2),
            "total": round(self.total_ms, 2),
        }  # fmt: skip


@dataclass(eq=False)
class _Pending:
    request_id: int
    image: SharedImage
    options: DetectOptions
    submitted_ns: int
    deadline_ns: int
    future: asyncio.Future[DetectOutcome]
    worker_id: int | None = None  # the worker it was handed to; None while waiting here
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)


def _close_when_made(copying: asyncio.Future[SharedImage]) -> None:
    if not copying.cancelled() and copying.exception() is None:
        copying.result().close()


class DetectionRequests:
    """The request queue, its deadlines and its figures.

    Args:
        api: `api.queue_size` (waiting requests at most).
        send: Sends a protocol message to the serving worker; False when there is none.
        serving_worker: The serving worker's id, None while none serves.
    """

    def __init__(self, api: ApiConfig, send: Callable[[object], bool], serving_worker: Callable[[], int | None]):
        self.api = api
        self._send = send
        self._serving_worker = serving_worker
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._waiting: deque[_Pending] = deque()
        self._admitting = 0  # requests whose image is being copied in: they count as waiting
        self._cameras_busy_at = -math.inf  # monotonic s of the last camera frame the detector ran
        self._closed = False
        self.counts = {"served": 0, "expired": 0, "rejected_full": 0, "cancelled": 0, "failed": 0, "late": 0}
        self._latency_ms: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self._busy: deque[tuple[float, str, float]] = deque()  # (monotonic s, "requests"|"cameras", busy ms)

    # ---- the caller's side --------------------------------------------------------------------

    async def detect(self, image: np.ndarray, options: DetectOptions, timeout_s: float) -> DetectOutcome:
        """Queue one image for the detector and wait for its answer.

        Args:
            image: HxWx3 uint8 BGR pixels (copied into shared memory; the caller keeps its array).
            options: The request's decode settings (class ids already resolved).
            timeout_s: Deadline from now, s.

        Returns:
            The detections in `image`'s pixels, stage times and queue wait.

        Raises:
            QueueFull: `api.queue_size` requests wait already.
            DeadlineExceeded: Not answered within `timeout_s` (it was never run if not started).
            DetectorUnavailable: The detector failed on it, or the service is stopping.
            asyncio.CancelledError: The caller was cancelled (client gone): the request is dropped.
        """
        if timeout_s <= 0:
            self.counts["expired"] += 1
            raise DeadlineExceeded("the deadline passed while the image was read")
        self.check_capacity()
        loop = asyncio.get_running_loop()
        submitted_ns = time.monotonic_ns()
        deadline_ns = submitted_ns + int(timeout_s * 1e9)
        # Copying a large image into the segment takes milliseconds: off the event loop, its queue place held.
        self._admitting += 1
        copying = loop.run_in_executor(None, SharedImage, image)
        try:
            shared = await asyncio.shield(copying)
        except asyncio.CancelledError:
            # The caller left mid-copy: the segment still gets made, so unlink it once it exists.
            self.counts["cancelled"] += 1
            copying.add_done_callback(_close_when_made)
            raise
        finally:
            self._admitting -= 1
        p = _Pending(next(self._ids), shared, options, submitted_ns, deadline_ns, loop.create_future())
        self._pending[p.request_id] = p
        self._waiting.append(p)
        p.timer = loop.call_at(loop.time() + (deadline_ns - time.monotonic_ns()) / 1e9, self._expire, p)
        self._dispatch()
        try:
            return await asyncio.shield(p.future)
        except asyncio.CancelledError:
            if not p.future.done():
                self.counts["cancelled"] += 1
                self._finish(p, cancel_at_worker=True)
            raise

    # ---- the worker's side --------------------------------------------------------------------

    def on_answer(self, msg: DetectAnswer | DetectNotRun) -> None:
        """A worker's answer; one for a request that already ended (expired, cancelled) is ignored."""
        p = self._pending.get(msg.request_id)
        if p is not None:
            if isinstance(msg, DetectAnswer):
                now_ns = time.monotonic_ns()
                outcome = DetectOutcome(
                    msg.detections, msg.timings, (msg.picked_mono_ns - p.submitted_ns) / 1e6,
                    (now_ns - p.submitted_ns) / 1e6, msg.worker_id,
                )  # fmt: skip
                self.counts["served"] += 1
                self._latency_ms.append(outcome.total_ms)
                self._finish(p, result=outcome)
            elif msg.reason == "expired":
                self._expire(p)
            elif msg.reason == "error":
                self.counts["failed"] += 1
                log.warning("detection request %d failed in worker %d: %s", p.request_id, msg.worker_id, msg.error)
                self._finish(p, error=DetectorUnavailable(f"the detector failed on this image: {msg.error}", 1.0))
            # "cancelled"/"gone": this side ended it already
        elif isinstance(msg, DetectAnswer):
            self.counts["late"] += 1  # it ran, but its caller had gone or its deadline had passed meanwhile
        if isinstance(msg, DetectAnswer):
            self.record_busy("requests", msg.timings.total_ms)
        self._dispatch()

    def on_worker_ready(self, worker_id: int) -> None:
        """A worker serves now: requests handed to another one go back to the front of the queue, in order."""
        moved = sorted((p for p in self._pending.values() if p.worker_id not in (None, worker_id)),
                       key=lambda p: p.request_id, reverse=True)  # fmt: skip
        for p in moved:
            p.worker_id = None
            self._waiting.appendleft(p)
        if moved:
            log.info("%d detection requests handed back for worker %d", len(moved), worker_id)
        self._dispatch()

    def check_capacity(self) -> None:
        """Refuse a new request now if it could not be queued: callers check before reading an upload.

        Raises:
            QueueFull: As many requests as `capacity()` are queued (counted in `rejected_full`).
            DetectorUnavailable: The service is stopping.
        """
        if self._closed:
            raise DetectorUnavailable("the service is stopping")
        admitted = len(self._pending) + self._admitting
        capacity = self.capacity()
        if admitted >= capacity:
            self.counts["rejected_full"] += 1
            raise QueueFull(f"the detection queue is full ({admitted} of {capacity} places taken; see api.queue_size)",
                            self._retry_after_s())  # fmt: skip

    def capacity(self) -> int:
        """Requests admitted at most now (waiting and at the worker).

        `api.queue_size` while the detector is free for requests. While cameras keep it busy, requests get
        `api.max_share` of it, so each one costs 1/max_share of an inference in wall time; the queue then admits
        proportionally fewer, `floor((queue_size + 1) x max_share) - 1` (at least 1): the last one admitted waits
        for the others and is answered within about (queue_size + 1) inferences instead of twice that, with one
        request's worth left for the jitter of a loaded box (measured: `vigil bench --modes api`).
        """
        q = self.api.queue_size
        if time.monotonic() - self._cameras_busy_at > 1.0:
            return q
        return max(1, min(q, math.floor((q + 1) * self.api.max_share) - 1))

    def record_busy(self, kind: str, busy_ms: float) -> None:
        """Detector time spent on `kind` ("requests" or "cameras"), for the share figures."""
        now = time.monotonic()
        self._busy.append((now, kind, busy_ms))
        if kind == "cameras":
            self._cameras_busy_at = now
        while self._busy and self._busy[0][0] < now - SHARE_WINDOW_S:
            self._busy.popleft()

    def close(self) -> None:
        """Answer every pending request 503 (the service is stopping) and unlink their images."""
        self._closed = True
        for p in list(self._pending.values()):
            self._finish(p, error=DetectorUnavailable("the service is stopping"), cancel_at_worker=True)

    # ---- figures ------------------------------------------------------------------------------

    def stats(self) -> dict:
        """The stats document's `api` section.

        Queue depth, in flight at the worker, counts per outcome (`late`: answers that came after their request
        had ended, i.e. work run for nobody), served latency p50/p99 (ms, recent
        `LATENCY_SAMPLES`), and the detector's busy share of requests vs cameras over `SHARE_WINDOW_S`.
        """
        lat = np.asarray(self._latency_ms, np.float64)
        busy = {"requests": 0.0, "cameras": 0.0}
        for _, kind, ms in self._busy:
            busy[kind] = busy.get(kind, 0.0) + ms
        total = sum(busy.values())
        return {
            "queue_depth": len(self._waiting),
            "in_flight": sum(1 for p in self._pending.values() if p.worker_id is not None),
            **self.counts,
            "latency_ms": {
                "p50": round(float(np.percentile(lat, 50)), 2) if lat.size else None,
                "p99": round(float(np.percentile(lat, 99)), 2) if lat.size else None,
            },
            "detector_share": {k: round(v / total, 3) if total else 0.0 for k, v in busy.items()},
        }

    # ---- internals ----------------------------------------------------------------------------

    def _dispatch(self) -> None:
        """Hand waiting requests to the serving worker while it holds fewer than WORKER_WINDOW."""
        wid = self._serving_worker()
        if wid is None or self._closed:
            return
        at_worker = sum(1 for p in self._pending.values() if p.worker_id == wid)
        while self._waiting and at_worker < WORKER_WINDOW:
            p = self._waiting.popleft()
            if not self._send(DetectRequest(p.request_id, p.image.spec, p.options, p.deadline_ns)):
                self._waiting.appendleft(p)
                return
            p.worker_id = wid
            at_worker += 1

    def _expire(self, p: _Pending) -> None:
        if p.request_id not in self._pending:
            return
        self.counts["expired"] += 1
        waited = (time.monotonic_ns() - p.submitted_ns) / 1e6
        self._finish(p, error=DeadlineExceeded(f"deadline passed after {waited:.0f} ms"), cancel_at_worker=True)

    def _finish(
        self,
        p: _Pending,
        *,
        result: DetectOutcome | None = None,
        error: RequestRejected | None = None,
        cancel_at_worker: bool = False,
    ) -> None:
        """End a request whichever way: forget it, tell its worker, settle its future, unlink its image."""
        if self._pending.pop(p.request_id, None) is None:
            return
        if p.timer is not None:
            p.timer.cancel()
        with contextlib.suppress(ValueError):
            self._waiting.remove(p)
        if cancel_at_worker and p.worker_id is not None:
            self._send(CancelDetect(p.request_id))
        if not p.future.done():
            if error is not None:
                p.future.set_exception(error)
            elif result is not None:
                p.future.set_result(result)
            else:
                p.future.cancel()
        p.image.close()
        self._dispatch()

    def _retry_after_s(self) -> float:
        """How long the queue takes to drain at the recent median service time (at least 1 s)."""
        lat = sorted(self._latency_ms)
        per_request_s = lat[len(lat) // 2] / 1e3 if lat else 1.0
        return max(1.0, math.ceil(per_request_s * self.api.queue_size))
