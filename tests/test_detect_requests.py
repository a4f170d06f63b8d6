"""Detection requests through the live pipeline's worker: parity, deadlines, backpressure, share, cancellation."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import run_driven, vigil_shm_segments, wait_until
from support.field_media import video_frames

from app.config import VigilConfig
from app.inference.detector import Detector
from app.inference.protocol import DetectOptions
from app.pipeline.live import LivePipeline
from app.pipeline.requests import DeadlineExceeded, DetectorUnavailable, DetectOutcome, QueueFull


def config(model: Path, video: Path, **extra) -> VigilConfig:
    data = {
        "cameras": [{"name": "cam", "source": str(video), "loop": True, "realtime": True}],
        "model": {"path": str(model), "threads": 1},
        "output": {"json_lines": False, "status_interval_s": 0},
        "http": {"enabled": False},
    }
    for key, value in extra.items():
        data.setdefault(key, {}).update(value)
    return VigilConfig.model_validate(data)


class Client:
    """Calls `pipe.detect` on the pipeline's loop from a test thread."""

    def __init__(self, pipe: LivePipeline) -> None:
        self.pipe = pipe
        assert wait_until(lambda: pipe._loop is not None and pipe.worker_info is not None, 120), "worker ready"

    def submit(self, image: np.ndarray, timeout_s: float = 60.0, options: DetectOptions | None = None):
        coro = self.pipe.detect(image, options or DetectOptions(), timeout_s)
        return asyncio.run_coroutine_threadsafe(coro, self.pipe._loop)

    def detect(self, image: np.ndarray, timeout_s: float = 60.0, options: DetectOptions | None = None):
        return self.submit(image, timeout_s, options).result(timeout_s + 60)


def test_boxes_equal_the_detector_on_the_same_image(coco_model: Path, sample_video: Path) -> None:
    cfg = config(coco_model, sample_video)
    (image,) = video_frames(sample_video, [40])
    reference = Detector.from_config(cfg.model)
    narrow = cfg.model.model_copy(update={"conf": 0.5, "classes": ["person"]})
    narrow_ref = Detector.from_config(narrow)
    want = reference.detect(image)[0].to_list(reference.names)
    want_narrow = narrow_ref.detect(image)[0].to_list(reference.names)
    assert want and want != want_narrow, "the frame must show objects, and the narrow options must change them"
    got: dict[str, list] = {}

    def drive() -> None:
        c = Client(pipe)
        out = c.detect(image)
        got["all"] = out.detections.to_list(c.pipe.worker_info.names)
        out2 = c.detect(image, options=DetectOptions(conf=0.5, classes=(0,)))
        got["narrow"] = out2.detections.to_list(c.pipe.worker_info.names)
        assert set(out.latency_ms()) == {"queue", "preprocess", "inference", "postprocess", "total"}

    pipe = LivePipeline(cfg, [])
    run_driven(pipe, drive)
    assert got["all"] == want
    assert got["narrow"] == want_narrow
    # The camera's own threshold is untouched by the request's options.
    assert pipe.cfg.model.conf == cfg.model.conf


def test_requests_past_their_deadline_are_answered_504_and_never_run(slow_model: Path, small_video: Path) -> None:
    image = np.full((240, 320, 3), 90, np.uint8)
    errors: list[BaseException] = []

    def drive() -> None:
        c = Client(pipe)
        futures = [c.submit(image, timeout_s=0.001) for _ in range(5)]
        for f in futures:
            errors.append(f.exception(60))
        c.detect(image)  # one that makes it: the worker's answers for the others would have come before it
        assert wait_until(lambda: pipe.requests.stats()["in_flight"] == 0, 30)

    pipe = LivePipeline(config(slow_model, small_video), [])
    run_driven(pipe, drive)
    assert all(isinstance(e, DeadlineExceeded) and e.status == 504 for e in errors), errors
    s = pipe.requests.stats()
    assert s["expired"] == 5 and s["served"] == 1 and s["late"] == 0, s


def test_a_full_queue_is_503_with_retry_after(slow_model: Path, small_video: Path) -> None:
    image = np.full((240, 320, 3), 90, np.uint8)
    outcomes: list[object] = []

    def drive() -> None:
        c = Client(pipe)
        futures = [c.submit(image) for _ in range(10)]
        for f in futures:
            try:
                outcomes.append(f.result(120))
            except QueueFull as exc:
                outcomes.append(exc)

    pipe = LivePipeline(config(slow_model, small_video, api={"queue_size": 2}), [])
    run_driven(pipe, drive)
    full = [o for o in outcomes if isinstance(o, QueueFull)]
    served = [o for o in outcomes if isinstance(o, DetectOutcome)]
    assert full and served and len(full) + len(served) == 10
    assert all(e.status == 503 and e.retry_after_s is not None and e.retry_after_s >= 1 for e in full)
    # While the camera keeps the detector busy, requests get half of it: the queue admits
    # max(1, floor((2 + 1) x 0.5) - 1) = 1 at a time; the rest were refused at once, not queued.
    assert len(served) <= 2
    assert pipe.requests.stats()["rejected_full"] == len(full)


def test_a_cancelled_request_is_dropped_and_its_image_unlinked(slow_model: Path, small_video: Path) -> None:
    image = np.full((240, 320, 3), 90, np.uint8)

    def drive() -> None:
        c = Client(pipe)
        futures = [c.submit(image) for _ in range(6)]
        for f in futures[2:]:
            f.cancel()  # like a client that disconnects: the handler's task is cancelled
        for f in futures[:2]:
            assert isinstance(f.result(120), DetectOutcome)
        assert wait_until(lambda: pipe.requests.stats()["queue_depth"] == 0, 30)
        assert wait_until(lambda: not {s for s in vigil_shm_segments(os.getpid()) if "-img-" in s}, 30)

    pipe = LivePipeline(config(slow_model, small_video, api={"queue_size": 20}), [])
    run_driven(pipe, drive)
    s = pipe.requests.stats()
    assert s["cancelled"] == 4 and s["served"] == 2, s


def test_requests_keep_to_their_share_and_the_camera_keeps_running(slow_model: Path, small_video: Path) -> None:
    image = np.full((240, 320, 3), 90, np.uint8)
    camera_processed: list[int] = []

    def drive() -> None:
        c = Client(pipe)
        assert wait_until(lambda: pipe.stats["cam"].processed >= 3, 60)
        start = pipe.stats["cam"].processed
        stop = threading.Event()

        def client() -> None:
            while not stop.is_set():
                c.detect(image)

        clients = [threading.Thread(target=client) for _ in range(3)]
        for t in clients:
            t.start()
        assert wait_until(lambda: pipe.requests.stats()["served"] >= 30, 240)
        stop.set()
        for t in clients:
            t.join(120)
        camera_processed.append(pipe.stats["cam"].processed - start)

    pipe = LivePipeline(config(slow_model, small_video, api={"max_share": 0.5}), [])
    run_driven(pipe, drive)
    s = pipe.requests.stats()
    # Three clients always have a request waiting, yet the camera got about half of the detector.
    assert camera_processed[0] >= 10, camera_processed
    assert 0.3 <= s["detector_share"]["requests"] <= 0.65, s


def test_requests_survive_a_worker_crash(tiny_model: Path, small_video: Path) -> None:
    image = np.full((120, 160, 3), 90, np.uint8)
    served: list[DetectOutcome] = []

    def drive() -> None:
        c = Client(pipe)
        while pipe.worker_restarts < 1 or len(served) < 20:
            served.append(c.detect(image))
        assert len(served) >= 20

    cfg = config(tiny_model, small_video, debug={"faults": {"crash_after_frames": 40}},
                 watchdog={"max_restarts": 5, "restart_window_s": 600}, worker={"restart_backoff_s": 0.1})  # fmt: skip
    pipe = LivePipeline(cfg, [])
    summary = run_driven(pipe, drive)
    assert summary.worker_restarts >= 1
    assert {o.worker_id for o in served} >= {1, 2}, "served by the first worker and its replacement"
    assert pipe.requests.stats()["failed"] == 0


def test_stopping_answers_waiting_requests_503_and_leaves_no_segments(slow_model: Path, small_video: Path) -> None:
    image = np.full((240, 320, 3), 90, np.uint8)
    futures = []

    def drive() -> None:
        c = Client(pipe)
        futures.extend(c.submit(image) for _ in range(6))
        assert wait_until(lambda: sum(pipe.requests.stats()[k] for k in ("queue_depth", "in_flight", "served")) == 6)

    pipe = LivePipeline(config(slow_model, small_video, api={"queue_size": 20}), [])
    run_driven(pipe, drive)
    outcomes = [f.exception(30) or f.result() for f in futures]
    assert any(isinstance(o, DetectorUnavailable) and o.status == 503 for o in outcomes), outcomes
    assert not vigil_shm_segments(os.getpid())


@pytest.mark.parametrize("bad", [np.zeros((0, 5, 3), np.uint8), np.zeros((4, 4), np.uint8)])
def test_shared_image_refuses_what_is_not_an_image(bad: np.ndarray) -> None:
    from app.inference.shared_image import SharedImage

    with pytest.raises(ValueError):
        SharedImage(bad)
