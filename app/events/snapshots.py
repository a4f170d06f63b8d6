"""Snapshots of tracked objects: a camera frame from its ring, the objects' boxes drawn, scaled, JPEG-encoded.

One way of making them for every consumer: the MQTT `<base>/<camera>/snapshot` and the event store's per-object
snapshots (`GET /api/events/<id>/snapshot.jpg`).

The frame is copied out of the ring on the asyncio loop (the slot is overwritten a few frames later; a 1080p
copy is ~1 ms), the rest runs on a `SnapshotWorker` thread: scaling, drawing and encoding a 1080p frame costs
~10 ms of CPU, too much for the loop that carries every camera's results.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np

from app.draw import draw_detections
from app.ring import FrameRing

log = logging.getLogger(__name__)

DEFAULT_QUALITY = 80


def grab_frame(ring: FrameRing, seq: int) -> np.ndarray | None:
    """Copy a frame out of a camera's ring: frame `seq` if the ring still holds it, else the newest.

    Args:
        ring: The camera's frame ring.
        seq: The wanted frame's sequence number (the result's `frame.seq`).

    Returns:
        An owned, writable `(H, W, 3)` uint8 BGR image (the newest frame is at most a few frames later than
        `seq`), or None when the ring holds no frame or the writer rewrote the slot during the copy.
    """
    view = ring.read_seq(seq) or ring.read_latest()
    if view is None:
        return None
    image = view.copy()
    return None if image is None else np.ascontiguousarray(image)


def render_snapshot(
    image: np.ndarray, objects: Sequence[dict], *, max_width: int | None = None, quality: int = DEFAULT_QUALITY
) -> bytes | None:
    """Scale a frame down, draw the objects' boxes on it and encode it as JPEG.

    It scales before drawing so the labels keep their size on any frame size.

    Args:
        image: `(H, W, 3)` uint8 BGR frame, owned by the caller (drawn on in place when not scaled).
        objects: Tracked objects as events carry them (`TrackedObject.as_dict`: `box` in pixels of `image`,
            `label`, `class_id`, `confidence`, `id`).
        max_width: Scale down (keeping the aspect ratio) to at most this many pixels wide; None keeps the size.
        quality: JPEG quality, 10..100.

    Returns:
        The JPEG bytes, None when encoding failed.
    """
    h, w = image.shape[:2]
    scale = 1.0
    if max_width is not None and w > max_width:
        scale = max_width / w
        image = cv2.resize(image, (max_width, max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    boxes = np.asarray([o["box"] for o in objects], np.float64).reshape(-1, 4) * scale
    draw_detections(image, boxes, [o["label"] for o in objects], [o["class_id"] for o in objects],
                    [o["confidence"] for o in objects], track_ids=[o["id"] for o in objects])  # fmt: skip
    ok, jpg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    return jpg.tobytes() if ok else None


@dataclass(frozen=True, slots=True)
class SnapshotJob:
    """One snapshot to render: the frame (copied out of the ring), the objects to draw, size and quality."""

    image: np.ndarray
    objects: tuple[dict, ...]
    max_width: int | None = None
    quality: int = DEFAULT_QUALITY


class SnapshotWorker:
    """Renders snapshots on one background thread, in submission order, with a bounded backlog.

    At most `max_pending` jobs wait or run at once (each holds one full frame: 6 MB at 1080p); a job beyond
    that is refused and counted in `dropped`, so a burst of objects costs frames' worth of memory, never more.

    Args:
        name: The thread's name (for logs and `ps`).
        max_pending: Jobs queued or running at most.
    """

    def __init__(self, name: str, max_pending: int = 4) -> None:
        self.name = name
        self.max_pending = max_pending
        self.dropped = 0
        self.rendered = 0
        self._pending = 0
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False

    def submit(self, job: SnapshotJob, on_done: Callable[[bytes], None]) -> bool:
        """Render `job` off the loop; `on_done(jpeg)` is then called on the running asyncio loop.

        Must be called from the asyncio loop. `on_done` is not called when rendering failed or the worker was
        closed meanwhile.

        Returns:
            False when the backlog is full (the job is dropped and counted), or the worker is closed.
        """
        if self._closed:
            return False
        with self._lock:
            if self._pending >= self.max_pending:
                self.dropped += 1
                return False
            self._pending += 1
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix=self.name)
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, self._render, job)

        def done(f: asyncio.Future[bytes | None]) -> None:
            with self._lock:
                self._pending -= 1
            if f.cancelled() or f.exception() is not None:
                if not f.cancelled():
                    log.warning("%s: snapshot failed: %s", self.name, f.exception())
                return
            jpeg = f.result()
            if jpeg is not None:
                self.rendered += 1
                on_done(jpeg)

        future.add_done_callback(done)
        return True

    @staticmethod
    def _render(job: SnapshotJob) -> bytes | None:
        return render_snapshot(job.image, job.objects, max_width=job.max_width, quality=job.quality)

    def close(self) -> None:
        """Stop the thread after the job it runs (idempotent); queued jobs are dropped, later ones refused."""
        self._closed = True
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
