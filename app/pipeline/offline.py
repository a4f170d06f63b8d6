"""Every frame of a finite source, in order (`vigil detect`). No dropping here: throughput, not freshness.

Decode and preprocessing of frame n+1 run in a prefetch thread while frame n is in the backend (ONNX
Runtime and OpenCV release the GIL), so the loop runs at the backend's speed.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from app.backends.base import StagedFrame
from app.capture.sources import Frame, FrameSource
from app.inference.detector import Detector
from app.letterbox import LetterboxGeometry
from app.types import Detections, StageTimings

_END = object()


@dataclass(frozen=True, slots=True)
class OfflineResult:
    """One frame of an offline run (file, images, bench) with its detections and stage timings.

    Attributes:
        frame: The source frame (`image` is `(H, W, 3)` uint8 BGR).
        detections: Boxes in the frame's pixel coordinates.
        timings: Preprocess, inference and postprocess time, ms.
    """

    frame: Frame
    detections: Detections
    timings: StageTimings


@dataclass(frozen=True, slots=True)
class _Prepared:
    frame: Frame
    tensor: np.ndarray | StagedFrame  # what Detector.prepare returned
    geometry: LetterboxGeometry
    preprocess_ms: float


def detect_frames(
    detector: Detector, source: FrameSource, max_frames: int | None = None, prefetch: int = 2
) -> Iterator[OfflineResult]:
    """Yields one result per frame of an opened source."""
    q: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()
    failure: list[BaseException] = []

    def produce() -> None:
        n = 0
        try:
            while not stop.is_set() and (max_frames is None or n < max_frames):
                frame = source.read()
                if frame is None:
                    break
                tensor, geometry, pre_ms = detector.prepare(frame.image)
                item = _Prepared(frame, tensor, geometry, pre_ms)
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                n += 1
        except BaseException as exc:  # surfaced in the consumer thread
            failure.append(exc)
        finally:
            with_timeout_put(q, _END, stop)

    producer = threading.Thread(target=produce, name="vigil-prefetch", daemon=True)
    producer.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                break
            outputs, inf_ms = detector.infer(item.tensor)
            det, post_ms = detector.decode(outputs, item.geometry)
            yield OfflineResult(item.frame, det, StageTimings(item.preprocess_ms, inf_ms, post_ms))
        if failure:
            raise failure[0]
    finally:
        stop.set()
        producer.join(timeout=5)


def with_timeout_put(q: queue.Queue, item: object, stop: threading.Event) -> None:
    """Put `item` on `q`, retrying every 0.1 s for up to 5 s.

    Gives up silently after 5 s, or on a full queue once `stop` is set (the consumer is gone).
    """
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            q.put(item, timeout=0.1)
            return
        except queue.Full:
            if stop.is_set():
                return
