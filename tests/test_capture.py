"""Sources and the capture loop, on real files and a real frame ring."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import make_video, wait_until
from support.field_media import (
    jpeg_with_orientation,
    make_resolution_change_ts,
    make_truncated_mp4,
    make_vfr,
    video_frames,
)

from app.capture.backoff import Backoff
from app.capture.ffmpeg import AvSource
from app.capture.loop import CaptureLoop, Pacer
from app.capture.sources import (
    ImageFileSource,
    ImageFolderSource,
    SourceError,
    VideoCaptureSource,
    decode_image,
    is_truncated_image,
    open_source,
)
from app.config import CameraConfig, redact_url
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
        assert isinstance(s, (VideoCaptureSource, AvSource)) and s.kind == kind and s.is_live is live, src
        # Devices and pipelines go through OpenCV; files and network streams through FFmpeg (PyAV).
        assert isinstance(s, AvSource) == (kind in ("file", "stream")), src
    assert isinstance(open_source(str(tmp_path / "imgs")), ImageFolderSource)
    assert isinstance(open_source("photo.JPG"), ImageFileSource)
    # Any scheme FFmpeg may open is a stream (srt, udp...), its scheme lower-cased (FFmpeg matches it
    # case-sensitively); file:// is a path.
    for url in ("srt://u:p@127.0.0.1:9000", "udp://239.0.0.1:1234", "RTSP://10.0.0.5/live", "rtmps://h/app/key"):
        s = open_source(url)
        assert isinstance(s, AvSource) and s.kind == "stream" and s.target.split("://")[0].islower(), url
    assert isinstance(open_source(f"file://{tmp_path / 'imgs'}"), ImageFolderSource)


def test_an_existing_path_is_always_a_file_whatever_its_name(tmp_path: Path, small_video: Path) -> None:
    """Field case `alarm!.mp4`: a '!' made it a GStreamer pipeline. Only a string that names nothing on
    disk is a pipeline, a camera index or a URL."""
    for name in ("alarm!.mp4", "2", "a ! b.mp4", " lead.mp4", "rtsp:"):
        p = tmp_path / name
        p.write_bytes(small_video.read_bytes())
        s = open_source(str(p))
        assert isinstance(s, AvSource) and s.kind == "file", name
        with s:
            assert s.read() is not None, name
    (tmp_path / "shots!").mkdir()
    cv2.imwrite(str(tmp_path / "shots!" / "a.png"), np.zeros((8, 8, 3), np.uint8))
    assert isinstance(open_source(str(tmp_path / "shots!")), ImageFolderSource)
    assert isinstance(open_source(str(tmp_path / "x!.JPG")), ImageFileSource)  # not there yet: by extension
    assert open_source(str(tmp_path / "missing ! pipe")).kind == "gstreamer"


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_applied(sample_video: Path, orientation: int) -> None:
    upright = video_frames(sample_video, [125])[0]
    reference = decode_image(cv2.imencode(".jpg", upright, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes())
    image = decode_image(jpeg_with_orientation(upright, orientation))
    assert image is not None and image.shape == (272, 640, 3), orientation
    assert np.abs(image.astype(int) - reference.astype(int)).mean() < 2.0, "upright, same pixels up to JPEG loss"


def test_still_images_keep_working_in_every_format(tmp_path: Path) -> None:
    """16-bit, grey and alpha images decode to the same picture as 8-bit RGB; empty, truncated and
    non-image files are skipped and counted, never decoded to a half-grey frame."""
    rng = np.random.default_rng(0)
    bgr = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    cv2.imwrite(str(tmp_path / "a_rgb8.png"), bgr)
    cv2.imwrite(str(tmp_path / "b_rgb16.png"), bgr.astype(np.uint16) * 257)
    cv2.imwrite(str(tmp_path / "c_gray8.png"), grey)
    cv2.imwrite(str(tmp_path / "d_gray16.png"), grey.astype(np.uint16) * 257)
    cv2.imwrite(str(tmp_path / "e_rgba8.png"), np.dstack([bgr, np.full((48, 64), 128, np.uint8)]))
    cv2.imwrite(str(tmp_path / "f_webp.webp"), bgr, [cv2.IMWRITE_WEBP_QUALITY, 101])  # lossless
    jpeg = cv2.imencode(".jpg", bgr)[1].tobytes()
    (tmp_path / "g_empty.jpg").write_bytes(b"")
    (tmp_path / "h_truncated.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    png = (tmp_path / "a_rgb8.png").read_bytes()
    (tmp_path / "i_truncated.png").write_bytes(png[: len(png) // 2])
    (tmp_path / "j_padded.jpg").write_bytes(jpeg + b"\x00" * 16)  # some cameras pad after EOI: whole
    (tmp_path / "notes.txt").write_text("not an image")
    with open_source(str(tmp_path)) as src:
        frames = []
        while (f := src.read()) is not None:
            frames.append(f)
    assert [f.file for f in frames] == ["a_rgb8.png", "b_rgb16.png", "c_gray8.png", "d_gray16.png", "e_rgba8.png",
                                        "f_webp.webp", "j_padded.jpg"]  # fmt: skip
    assert src.corrupt == 3
    grey_bgr = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    for f, want in zip(frames, [bgr, bgr, grey_bgr, grey_bgr, bgr, bgr]):
        assert f.image.dtype == np.uint8 and np.array_equal(f.image, want), f.file
    assert is_truncated_image(jpeg[:-2]) and not is_truncated_image(jpeg) and not is_truncated_image(png)


def test_whole_images_with_trailers_decode_and_impossible_ones_are_skipped(tmp_path: Path) -> None:
    """Found by trying to break the truncation check: a phone's Motion Photo (a video after the JPEG's
    EOI) and a PNG with bytes after IEND are whole; an EOI inside the EXIF thumbnail does not make a cut
    JPEG whole; progressive JPEGs with restart markers scan right; a header claiming 60000x60000 pixels
    is skipped like any unreadable file instead of ending the folder."""
    import struct
    import zlib

    rng = np.random.default_rng(1)
    bgr = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    jpeg = cv2.imencode(".jpg", bgr)[1].tobytes()
    progressive = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1, cv2.IMWRITE_JPEG_RST_INTERVAL, 2])[1]
    png = cv2.imencode(".png", bgr)[1].tobytes()
    thumb = cv2.imencode(".jpg", bgr[:8, :8])[1].tobytes()  # an EXIF-style embedded JPEG, EOI and all
    app1 = b"\xff\xe1" + struct.pack(">H", len(thumb) + 8) + b"Exif\x00\x00" + thumb
    with_thumb = jpeg[:2] + app1 + jpeg[2:]

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    huge = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0))
    huge += chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    files = {"a_motion.jpg": jpeg + b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8,
             "b_trailer.png": png + b"SAMSUNG trailer \xff\xd9",
             "c_thumb.jpg": with_thumb, "d_progressive.jpg": progressive.tobytes(),
             "e_huge.png": huge, "f_thumb_cut.jpg": with_thumb[: len(app1) + len(jpeg) // 2]}  # fmt: skip
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    assert not is_truncated_image(with_thumb) and is_truncated_image(files["f_thumb_cut.jpg"])
    with open_source(str(tmp_path)) as src:
        frames = list(iter(src.read, None))
    assert [f.file for f in frames] == ["a_motion.jpg", "b_trailer.png", "c_thumb.jpg", "d_progressive.jpg"]
    assert src.corrupt == 2
    assert all(f.image.shape == (64, 80, 3) for f in frames)


def test_variable_frame_rate_file_reports_each_frames_pts(tmp_path: Path, sample_video: Path) -> None:
    video = make_vfr(tmp_path / "vfr.mp4", video_frames(sample_video, range(0, 50, 5)), fast=5, slow=4)
    with open_source(str(video)) as src:
        pts = [f.pts for f in iter(src.read, None)]
    assert pts == pytest.approx([0.0, 0.04, 0.08, 0.12, 0.16, 0.56, 0.96, 1.36, 1.76], abs=1e-3)


def test_file_capture_is_paced_by_pts(tmp_path: Path, sample_video: Path) -> None:
    """Field case vfr.mp4: frames 0.4 s apart must be written 0.4 s apart, not at the average rate.
    Only lower bounds: a wait can only come late on a busy machine, never early."""
    video = make_vfr(tmp_path / "vfr.mp4", video_frames(sample_video, range(0, 50, 5)), fast=5, slow=4)
    with FrameRing.create(16, 272, 640) as ring:
        loop = CaptureLoop(camera(video, realtime=True), ring)
        loop.start()
        loop.join(30)
        assert loop.finished
        written = [ring.read_seq(seq).meta for seq in range(1, 10)]
    gaps = np.diff([m.captured_mono_ns / 1e9 for m in written])
    assert all(g >= 0.4 - 0.01 for g in gaps[4:]), gaps  # the slow part is played as recorded
    assert sum(gaps) >= 1.76 - 0.02, "the whole file takes as long as its footage"


def test_pacer_follows_pts_and_resynchronises() -> None:
    now = [100.0]
    pacer = Pacer("pts", clock=lambda: now[0])

    def play(pts: float, late: float = 0.0) -> float:
        now[0] += late  # decode or scheduling delay before the frame is due
        d = pacer.delay(pts)
        now[0] += d
        return d

    assert play(0.0) == 0.0
    assert play(0.04) == pytest.approx(0.04)
    assert play(0.44) == pytest.approx(0.4)
    assert play(0.48, late=0.02) == pytest.approx(0.02)
    assert play(0.52, late=0.5) == 0.0, "fell behind by more than a frame: resync, no burst"
    assert play(0.56) == pytest.approx(0.04)
    assert play(0.10) == 0.0, "pts went backwards (a new segment): resync"
    assert play(0.14) == pytest.approx(0.04)
    assert play(3600.0) == 0.0, "a jump of an hour is not waited out"
    fixed = Pacer(50.0, clock=lambda: now[0])
    assert [fixed.delay(p) for p in (0.0, 7.0, 9.0)] == [0.0, pytest.approx(0.02), pytest.approx(0.04)]
    assert Pacer(None).delay(5.0) == 0.0


def test_resolution_change_mid_stream_is_followed(tmp_path: Path, sample_video: Path) -> None:
    """Field case res_change.ts: 640x272, then 640x480. Every frame keeps its real size (OpenCV's
    VideoCapture squeezed the second part into the first size), the change is counted, and the ring
    carries each frame at its size."""
    video = make_resolution_change_ts(tmp_path / "rc.ts", video_frames(sample_video, range(0, 50, 5)), seconds=1.0)
    with open_source(str(video)) as src:
        sizes = [f.image.shape[:2] for f in iter(src.read, None)]
    assert sizes[:25] == [(272, 640)] * 25 and sizes[25:] == [(480, 640)] * 25
    assert src.resolution_changes == 1
    with FrameRing.create(64, 480, 640) as ring:
        loop = CaptureLoop(camera(video, realtime=False), ring)
        loop.start()
        loop.join(30)
        assert loop.finished and loop.counters.resolution_changes == 1
        assert (loop.counters.width, loop.counters.height) == (640, 480)
        assert [(m.height, m.width) for m in (ring.read_seq(s).meta for s in (25, 26))] == [(272, 640), (480, 640)]


def test_truncated_file_says_how_many_frames_it_lost(tmp_path: Path, sample_video: Path, caplog) -> None:
    video, declared = make_truncated_mp4(tmp_path / "cut.mp4", video_frames(sample_video, range(0, 50, 5)))
    with open_source(str(video)) as src:
        n = sum(1 for _ in iter(src.read, None))
    assert 0 < n < declared and src.declared_frames == declared
    assert src.shortfall is not None and f"after {n} of its {declared} declared frames" in src.shortfall
    whole = make_video(tmp_path / "whole.mp4", frames=30)
    with open_source(str(whole)) as src:
        assert sum(1 for _ in iter(src.read, None)) == 30 and src.shortfall is None
    with FrameRing.create(4, 272, 640) as ring, caplog.at_level("WARNING"):
        loop = CaptureLoop(camera(video, realtime=False, loop=True), ring)
        loop.start()
        assert wait_until(lambda: ring.latest_seq > 3 * n, 60)
        loop.stop()
        loop.join(5)
    assert f"after {n} of its {declared} declared frames" in loop.counters.last_error
    assert sum("declared frames" in r.getMessage() for r in caplog.records) == 1, "once, not once per loop"


def test_credentials_are_redacted() -> None:
    s = open_source("rtsp://admin:hunter2@192.0.2.1:554/live")
    assert "hunter2" not in s.description and "admin" not in s.description and "***@" in s.description


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        # FFmpeg splits the authority at its *last* '@': the password here is "Sup3r@Secret".
        ("rtsp://viewer:Sup3r@Secret@127.0.0.1:8554/stream1", "rtsp://***@127.0.0.1:8554/stream1"),
        ("rtsp://admin@10.0.0.5/live", "rtsp://***@10.0.0.5/live"),
        ("http://cam.local/snap.cgi?user=admin&PassWord=hunter2&chn=1",
         "http://cam.local/snap.cgi?user=***&PassWord=***&chn=1"),
        ("rtsp://10.0.0.5/h264?username=a&pwd=b&pass=c&token=d&AUTH=e#f",
         "rtsp://10.0.0.5/h264?username=***&pwd=***&pass=***&token=***&AUTH=***#f"),
        ("rtspsrc location=rtsp://u:p@h/x user-id=bob user-pw=s3cret ! decodebin ! appsink",
         "rtspsrc location=rtsp://***@h/x user-id=*** user-pw=*** ! decodebin ! appsink"),
        ("could not open stream rtsp://u:p@w@h/x: 401", "could not open stream rtsp://***@h/x: 401"),
        ("clip.mp4", "clip.mp4"),
        # Found by trying to break it: an unescaped '#' or '/' in the password, credentials as path
        # parameters (XMEye cameras), token and key parameters of other names, any stream scheme.
        ("rtsp://127.0.0.1:1#S3cretH@127.0.0.1:1/x", "rtsp://***@127.0.0.1:1/x"),
        ("rtsp://a:b/c?d@10.0.0.5/x", "rtsp://***@10.0.0.5/x"),
        ("rtsp://127.0.0.1:1/user=admin_password=S3cretX_channel=1_stream=0.sdp",
         "rtsp://127.0.0.1:1/user=***_password=***_channel=1_stream=0.sdp"),
        ("http://127.0.0.1:1/live.m3u8?access_token=S3cretT&api_key=S3cretK&sig=S&passwd=P&chn=2",
         "http://127.0.0.1:1/live.m3u8?access_token=***&api_key=***&sig=***&passwd=***&chn=2"),
        ("srt://u:s3cretA@127.0.0.1:9000", "srt://***@127.0.0.1:9000"),
        ("RTSP://u:p@127.0.0.1:1/x", "RTSP://***@127.0.0.1:1/x"),
        # An '@' in a path is masked too: the redactor masks too much rather than too little.
        ("http://host/path/a@b?chn=1", "http://***@b?chn=1"),
    ],
)  # fmt: skip
def test_one_redactor_masks_every_credential(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    if "://" in url.split(" ")[0] or " ! " in url:  # a source: logs, errors and stats name it so
        assert open_source(url).description.lower().endswith(shown.lower())


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
    # FFmpeg sources scale while they convert (one swscale pass instead of convert, then resize)
    src = open_source(str(small_video))
    src.fit_within = (60, 60)
    with src:
        assert src.read().image.shape == (45, 60, 3) and src.size == (160, 120)
