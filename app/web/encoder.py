"""One VP8 encoder per camera, shared by all its viewers.

Encoding per viewer costs ~7% of a 2-core machine each (VP8, 15 fps, 640 px); encoding once and handing
the same packets to every viewer keeps the cost flat in the number of viewers. aiortc packetizes
pre-encoded `av.Packet`s (`Encoder.pack`), so viewers only copy bytes. The encoder runs only while
somebody watches, off the event loop, and never touches the inference path: it reads the newest frame
from the shared-memory ring like any other reader.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import av
import cv2
import numpy as np

from app.config import HttpConfig
from app.draw import draw_detections
from app.ring import FrameRing

if TYPE_CHECKING:
    from av.video.codeccontext import VideoCodecContext

log = logging.getLogger(__name__)

VIDEO_CLOCK = 90_000  # RTP video clock (Hz)
TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK)


@dataclass(frozen=True, slots=True)
class EncodedFrame:
    """One VP8-encoded preview frame, shared by every viewer of the camera.

    Attributes:
        data: The encoded VP8 bitstream of the frame.
        keyframe: True for an intra frame a new or lagging viewer can start decoding at.
        pts: Presentation time in 90 kHz ticks of the capture clock.
        seq: Ring sequence number of the source frame.
        captured_wall: Capture time, wall clock (s since the epoch).
        captured_mono_ns: Capture time, monotonic ns.
        width: Encoded width, pixels (even).
        height: Encoded height, pixels (even).
        encode_ms: Time spent encoding (colour conversion included), ms.
    """

    data: bytes
    keyframe: bool
    pts: int  # 90 kHz ticks of the capture clock
    seq: int  # ring sequence number of the source frame
    captured_wall: float
    captured_mono_ns: int
    width: int
    height: int
    encode_ms: float


def _lower_priority(nice: int) -> None:
    """Niceness is per thread on Linux: this lowers only the encoder thread."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0) + nice)


class PacketQueue:
    """A viewer's inbox of encoded frames (at most `maxsize`).

    A viewer that falls this far behind skips to the next keyframe: VP8 P-frames are useless without their references,
    so dropping a few would only show garbage.
    """

    def __init__(self, maxsize: int = 30) -> None:
        self._q: asyncio.Queue[EncodedFrame | None] = asyncio.Queue(maxsize)
        self.need_keyframe = True
        self.overflows = 0

    def put(self, frame: EncodedFrame) -> bool:
        """False when this viewer needs a keyframe to go on (it overflowed)."""
        if self.need_keyframe and not frame.keyframe:
            return False
        self.need_keyframe = False
        try:
            self._q.put_nowait(frame)
            return True
        except asyncio.QueueFull:
            self.overflows += 1
            while not self._q.empty():
                self._q.get_nowait()
            self.need_keyframe = True
            return False

    def close(self) -> None:
        """Queue the end-of-stream marker (None), unless the queue is full."""
        with contextlib.suppress(asyncio.QueueFull):
            self._q.put_nowait(None)

    async def get(self) -> EncodedFrame | None:
        """Wait for the next frame; None once the queue was closed."""
        return await self._q.get()


def preview_size(width: int, height: int, target_width: int) -> tuple[int, int]:
    """Scaled to target_width (never up), both even as 4:2:0 needs."""
    scale = min(1.0, target_width / width)
    w = max(16, round(width * scale / 2) * 2)
    h = max(16, round(height * scale / 2) * 2)
    return w, h


def draw_boxes(image: np.ndarray, boxes: list[dict]) -> None:
    """Server-side overlay (http.server_side_boxes), drawn in place.

    Args:
        image: `(H, W, 3)` uint8 BGR preview frame.
        boxes: The page's box dicts: `label`, `confidence`, `box_norm` (`[x1, y1, x2, y2]`, 0..1 of the
            frame) and `class_id` (0 when absent).
    """
    h, w = image.shape[:2]
    xyxy = np.asarray([b["box_norm"] for b in boxes], np.float64).reshape(-1, 4) * np.array([w, h, w, h], np.float64)
    draw_detections(image, xyxy, [b["label"] for b in boxes], [b.get("class_id", 0) for b in boxes],
                    [b["confidence"] for b in boxes])  # fmt: skip


class Vp8Encoder:
    """libvpx in real-time mode; rebuilt when the frame size changes."""

    def __init__(self, bitrate_kbps: int, keyframe_frames: int, threads: int = 1, cpu_used: int = 16) -> None:
        self.bitrate = bitrate_kbps * 1000
        self.keyframe_frames = max(1, keyframe_frames)
        self.threads = threads
        self.cpu_used = cpu_used
        self._ctx: VideoCodecContext | None = None
        self._size = (0, 0)

    def _open(self, w: int, h: int) -> VideoCodecContext:
        ctx = av.CodecContext.create("libvpx", "w")
        ctx.width, ctx.height = w, h
        ctx.pix_fmt = "yuv420p"
        ctx.time_base = TIME_BASE
        ctx.bit_rate = self.bitrate
        ctx.gop_size = self.keyframe_frames
        ctx.thread_count = self.threads
        ctx.options = {
            "deadline": "realtime",
            "cpu-used": str(self.cpu_used),  # fastest: the preview is a monitor, not an archive
            "lag-in-frames": "0",  # no look-ahead: every frame leaves the encoder at once
            "error-resilient": "1",
            "static-thresh": "1",
            "minrate": str(self.bitrate),
            "maxrate": str(self.bitrate),
            "bufsize": str(self.bitrate),
        }
        ctx.open()
        self._size = (w, h)
        return ctx

    def encode(self, bgr: np.ndarray, pts: int, keyframe: bool) -> tuple[bytes, bool]:
        """Encode one `(H, W, 3)` uint8 BGR frame (H and W even) as VP8.

        Args:
            bgr: The frame; a new size reopens the encoder and forces a keyframe.
            pts: Presentation time, 90 kHz ticks.
            keyframe: Force an intra frame.

        Returns:
            (the frame's packets concatenated, whether the output is a keyframe).
        """
        h, w = bgr.shape[:2]
        if self._ctx is None or self._size != (w, h):
            self._ctx = self._open(w, h)
            keyframe = True
        yuv = cast("np.ndarray[Any, np.dtype[np.uint8]]", cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420))
        frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        frame.pts = pts
        frame.time_base = TIME_BASE
        if keyframe:
            frame.pict_type = av.video.frame.PictureType.I
        data = b""
        is_key = False
        for packet in self._ctx.encode(frame):
            data += bytes(packet)
            is_key = is_key or packet.is_keyframe
        return data, is_key


class PreviewEncoder:
    """Encodes the newest frame of one camera at most `preview_fps` times a second while anyone watches."""

    def __init__(
        self, camera: str, ring: FrameRing, cfg: HttpConfig,
        overlay: Callable[[], list[dict]] | None = None,
        on_encoded: Callable[[EncodedFrame], None] | None = None,
    ) -> None:  # fmt: skip
        self.camera = camera
        self.ring = ring
        self.cfg = cfg
        self.overlay = overlay
        self.on_encoded = on_encoded
        self._subscribers: set[PacketQueue] = set()
        self._task: asyncio.Task | None = None
        self._force_keyframe = True
        self._last_seq = 0
        self._codec = Vp8Encoder(cfg.preview_bitrate_kbps, int(cfg.preview_keyframe_s * cfg.preview_fps))
        # Its own thread, at a lower priority: on a box the detector saturates, the preview takes what is
        # left instead of preempting ONNX Runtime's threads (which stall as a group when one is preempted).
        self._executor = ThreadPoolExecutor(
            1, f"preview-{camera}", initializer=_lower_priority, initargs=(cfg.preview_nice,)
        )
        self.frames_encoded = 0
        self.last_encode_ms: float | None = None

    @property
    def subscribers(self) -> int:
        """The number of viewers watching now."""
        return len(self._subscribers)

    def subscribe(self) -> PacketQueue:
        """Add a viewer: forces a keyframe and starts the encoding task if it is not running."""
        q = PacketQueue()
        self._subscribers.add(q)
        self._force_keyframe = True  # a new viewer can only start decoding at a keyframe
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"preview-{self.camera}")
        return q

    def unsubscribe(self, q: PacketQueue) -> None:
        """Remove a viewer and close its queue; the last one leaving stops encoding."""
        self._subscribers.discard(q)
        q.close()
        if not self._subscribers and self._task is not None:
            self._task.cancel()  # nobody watches: no encoding at all
            self._task = None

    def request_keyframe(self) -> None:
        """Make the next encoded frame a keyframe (e.g. on a viewer's PLI)."""
        self._force_keyframe = True

    async def stop(self) -> None:
        """Drop every viewer, cancel the encoding task and shut the encoder thread down."""
        for q in list(self._subscribers):
            self.unsubscribe(q)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _encode_newest(self) -> EncodedFrame | None:
        view = self.ring.read_latest(after_seq=self._last_seq)
        if view is None:
            return None
        t0 = time.perf_counter()
        meta = view.meta
        w, h = preview_size(meta.width, meta.height, self.cfg.preview_width)
        # Scale straight out of shared memory; a torn read (the writer lapped us) is dropped below.
        small = cv2.resize(view.image, (w, h), interpolation=cv2.INTER_AREA)
        if not view.is_valid():
            return None
        self._last_seq = meta.seq
        if self.overlay is not None:
            draw_boxes(small, self.overlay())
        keyframe, self._force_keyframe = self._force_keyframe, False
        pts = meta.captured_mono_ns * VIDEO_CLOCK // 1_000_000_000
        data, is_key = self._codec.encode(small, pts, keyframe)
        if not data:
            return None
        self.frames_encoded += 1
        return EncodedFrame(data, is_key, pts, meta.seq, meta.captured_wall, meta.captured_mono_ns, w, h,
                            (time.perf_counter() - t0) * 1e3)  # fmt: skip

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        period = 1.0 / self.cfg.preview_fps
        next_at = loop.time()
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            if self.ring.latest_seq <= self._last_seq:  # nothing new: no thread hop for nothing
                next_at = loop.time() + min(period, 0.01)
                continue
            try:
                frame = await loop.run_in_executor(self._executor, self._encode_newest)
            except Exception:
                log.exception("preview encoder for %s failed; starting a fresh one", self.camera)
                self._codec = Vp8Encoder(self.cfg.preview_bitrate_kbps, self._codec.keyframe_frames)
                self._force_keyframe = True
                frame = None
            if frame is None:
                next_at = loop.time() + min(period, 0.01)  # nothing new yet: look again soon
                continue
            next_at = max(next_at + period, loop.time())
            self.last_encode_ms = frame.encode_ms
            if self.on_encoded is not None:
                self.on_encoded(frame)
            for q in list(self._subscribers):
                if not q.put(frame):
                    self._force_keyframe = True
