"""Sources and the capture loop, on real files and a real frame ring."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import make_video, wait_until

from app.capture.backoff import Backoff
from app.capture.loop import CaptureLoop
from app.capture.sources import (
    ImageFileSource,
    ImageFolderSource,
    SourceError,
    VideoCaptureSource,
    open_source,
)
from app.config import CameraConfig
from app.ring import FrameRing


def test_classification(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    cases = {
        0: ("camera", True),
        "2": ("camera", True),
        "/dev/video0": ("camera", True),
        "rtsp://user:secret@10.0.0.5/stream": ("stream", True),
        "https://cam.local/mjpeg": ("stream", True),
        "v4l2src device=/dev/video0 ! videoconvert ! appsink": ("gstreamer", True),
        "clip.mp4": ("file", False),
    }
    for src, (kind, live) in cases.items():
        s = open_source(src)
        assert isinstance(s, VideoCaptureSource) and s.kind == kind and s.is_live is live, src
    assert isinstance(open_source(str(tmp_path / "imgs")), ImageFolderSource)
    assert isinstance(open_source("photo.JPG"), ImageFileSource)


def test_credentials_are_redacted() -> None:
    s = open_source("rtsp://admin:hunter2@192.0.2.1:554/live")
    assert "hunter2" not in s.description and "admin" not in s.description and "***@" in s.description


def test_video_file_reads_all_frames_with_pts(small_video: Path) -> None:
    with open_source(str(small_video)) as src:
        frames = []
        while (f := src.read()) is not None:
            frames.append(f)
    assert len(frames) == 50 and [f.index for f in frames] == list(range(50))
    assert frames[0].image.shape == (120, 160, 3) and frames[0].image.dtype == np.uint8
    pts = [f.pts for f in frames]
    assert pts == sorted(pts) and pts[-1] == pytest.approx(49 / 25, abs=0.05)
    assert src.fps == pytest.approx(25)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        open_source(str(tmp_path / "nope.mp4")).open()
    junk = tmp_path / "junk.mp4"
    junk.write_text("not a video at all")
    with pytest.raises(SourceError, match="could not"):
        open_source(str(junk)).open()
    with pytest.raises(SourceError, match="does not exist"):
        open_source(str(tmp_path / "nope.png")).open()


def test_image_folder_skips_and_counts_bad_files(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((10, 12), np.uint8))  # grayscale -> BGR
    (tmp_path / "b.jpg").write_bytes(b"garbage")
    cv2.imwrite(str(tmp_path / "c.png"), np.zeros((10, 12, 4), np.uint8))  # BGRA -> BGR
    with open_source(str(tmp_path)) as src:
        frames = [src.read(), src.read(), src.read()]
    assert [f.index for f in frames[:2]] == [0, 1] and frames[2] is None
    assert all(f.image.shape == (10, 12, 3) for f in frames[:2])
    assert src.corrupt == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SourceError, match="has no images"):
        open_source(str(empty)).open()


def test_backoff_grows_and_caps() -> None:
    b = Backoff(0.5, 4.0, 2.0, jitter=0)
    assert [b.next_delay() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    b.reset()
    assert b.next_delay() == 0.5
    j = Backoff(1.0, 10.0, jitter=0.1)
    assert all(0.9 <= j.next_delay() <= 1.1 for _ in range(1)) and 1.8 <= j.next_delay() <= 2.2


def camera(source: Path, **kw) -> CameraConfig:
    base = {"name": "t", "source": str(source), "reconnect": {"initial_s": 0.05, "max_s": 0.2}}
    base.update(kw)
    return CameraConfig.model_validate(base)


def test_capture_loop_fills_ring_and_finishes(small_video: Path) -> None:
    with FrameRing.create(4, 120, 160) as ring:
        loop = CaptureLoop(camera(small_video, realtime=False), ring)
        loop.start()
        loop.join(10)
        assert loop.finished and not loop.is_alive()
        assert ring.latest_seq == 50 and loop.counters.frames == 50
        assert ring.read_latest().meta.index == 49


def test_realtime_pacing(small_video: Path) -> None:
    with FrameRing.create(4, 120, 160) as ring:
        loop = CaptureLoop(camera(small_video, realtime=True, fps=50), ring)
        t0 = time.monotonic()
        loop.start()
        loop.join(10)
        elapsed = time.monotonic() - t0
    assert loop.finished
    assert 0.8 <= elapsed <= 3.0, f"50 frames at 50 fps took {elapsed:.2f} s"


def test_loop_keeps_going_and_seq_keeps_increasing(small_video: Path) -> None:
    with FrameRing.create(4, 120, 160) as ring:
        loop = CaptureLoop(camera(small_video, realtime=False, loop=True), ring)
        loop.start()
        assert wait_until(lambda: ring.latest_seq > 120)
        loop.stop()
        loop.join(2)
        assert not loop.is_alive() and not loop.finished


def test_file_that_disappears_and_reappears(tmp_path: Path) -> None:
    video = make_video(tmp_path / "cam.mp4", frames=10)
    with FrameRing.create(4, 120, 160) as ring:
        loop = CaptureLoop(camera(video, realtime=True, fps=100, loop=True), ring)
        loop.start()
        assert wait_until(lambda: ring.latest_seq >= 15)
        video.rename(tmp_path / "away.mp4")
        assert wait_until(lambda: loop.counters.open_failures >= 2)
        assert "does not exist" in loop.counters.last_error
        stalled = ring.latest_seq
        (tmp_path / "away.mp4").rename(video)
        assert wait_until(lambda: ring.latest_seq >= stalled + 10)
        assert loop.counters.connected
        loop.stop()
        loop.join(2)
        assert not loop.is_alive()


def test_stop_is_prompt_during_backoff(tmp_path: Path) -> None:
    with FrameRing.create(2, 8, 8) as ring:
        cam = camera(tmp_path / "never.mp4", reconnect={"initial_s": 30, "max_s": 30})
        loop = CaptureLoop(cam, ring)
        loop.start()
        assert wait_until(lambda: loop.counters.open_failures == 1)
        t0 = time.monotonic()
        loop.stop()
        loop.join(2)
        assert not loop.is_alive() and time.monotonic() - t0 < 1.0


def test_oversize_frames_are_downscaled(small_video: Path) -> None:
    with FrameRing.create(2, 60, 60) as ring:
        loop = CaptureLoop(camera(small_video, realtime=False, max_width=60, max_height=60), ring)
        loop.start()
        loop.join(10)
        meta = ring.read_latest().meta
        assert (meta.height, meta.width) == (45, 60)
