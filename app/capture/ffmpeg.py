"""Video files and network streams decoded with FFmpeg through PyAV (already a dependency, via aiortc).

Why not OpenCV's VideoCapture here: it converts every frame to the size of the first one (a stream
whose resolution changes mid-way comes out squeezed, with no way to tell), it reports one average frame
rate for variable-frame-rate files, and a decode error mid-file looks like the end of the file. PyAV gives
each decoded frame with its own size and presentation time, and decode errors per packet.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import av
import av.error

from app.capture.sources import MAX_CONSECUTIVE_BAD, Frame, FrameSource, SourceError
from app.config import redact_url

log = logging.getLogger(__name__)

# Network streams: give up on an open or a read after this long, so a vanished camera becomes a
# reconnect with backoff instead of a thread stuck in a socket read.
STREAM_TIMEOUT_S = 10.0

# Decoder threading, (PyAV thread_type, thread_count; 0 = FFmpeg's choice, about one per core). Frame
# threading decodes several frames at once: fine for files, but it holds back as many frames as it has
# threads, which a live camera would pay in latency, so live streams use slice threading. Measured with
# `vigil bench --modes realtime` (docs/BENCHMARKS.md, 2026-11-30, 2 cores): on the 640x272 H.264 sample,
# decode + BGR conversion is ~0.8 ms CPU a frame with AUTO, SLICE or one thread alike (2% of a core at
# 25 fps), and the live pipeline's fps, inference time and frame age do not change between them.
FILE_DECODE_THREADING: tuple[str, int] = ("AUTO", 0)
LIVE_DECODE_THREADING: tuple[str, int] = ("SLICE", 0)


def fit_size(size: tuple[int, int], bound: tuple[int, int]) -> tuple[int, int]:
    """(width, height) scaled down, aspect kept, to fit within `bound`; unchanged when it already fits."""
    (w, h), (mw, mh) = size, bound
    if w <= mw and h <= mh:
        return size
    r = min(mw / w, mh / h)
    return max(1, min(mw, int(w * r))), max(1, min(mh, int(h * r)))


def declared_shortfall(read: int, declared: int) -> bool:
    """True when a file ended clearly short of the frame count its container declares.

    Edit lists and B-frame reordering can make a whole file decode a frame or two fewer than its
    header says, so a small difference (2 frames or 1%) is not a truncation.
    """
    return declared > 0 and declared - read > max(2, declared // 100)


class AvSource(FrameSource):
    """A video file (`kind="file"`) or a network stream (`kind="stream"`: rtsp, rtmp, http(s)).

    Frames come at their decoded size (scaled down to ``fit_within`` if set), so a mid-stream resolution
    change is seen and counted in ``resolution_changes``.

    Args:
        target: File path or stream URL (may hold credentials; descriptions redact them).
        kind: ``"file"`` or ``"stream"``.
        is_live: True for streams: pts becomes seconds since open, and reads time out after STREAM_TIMEOUT_S.
    """

    def __init__(self, target: str, *, kind: str, is_live: bool) -> None:
        super().__init__()
        self.target = target
        self.kind = kind
        self.is_live = is_live
        self.description = f"{kind} {redact_url(target)}"
        self.resolution_changes = 0
        self.declared_frames = 0  # what the container says (0: unknown, as for most live streams)
        self._container: av.container.InputContainer | None = None
        self._frames: Iterator[av.VideoFrame] | None = None
        self._pending: Frame | None = None
        self._index = 0
        self._pts0: float | None = None
        self._t0 = 0.0

    def open(self) -> None:
        """Open the container and its first video stream; a file must also decode its first frame.

        Raises:
            SourceError: The file is missing or unreadable, FFmpeg cannot open the target, it has no video
                stream, or a file decodes no frame at all.
        """
        self.close()
        if self.kind == "file":
            _check_readable_file(Path(self.target))
        options: dict[str, str] = {}
        if self.target.lower().startswith(("rtsp://", "rtsps://")):
            options["rtsp_transport"] = "tcp"  # no UDP loss through NAT or busy Wi-Fi
        try:
            container = av.open(
                self.target, options=options, timeout=(STREAM_TIMEOUT_S, STREAM_TIMEOUT_S) if self.is_live else None
            )
        except (av.error.FFmpegError, OSError) as exc:
            raise SourceError(f"could not open {self.description}: {_reason(exc)}") from None
        if not container.streams.video:
            container.close()
            raise SourceError(f"{self.description} has no video stream")
        stream = container.streams.video[0]
        thread_type, thread_count = LIVE_DECODE_THREADING if self.is_live else FILE_DECODE_THREADING
        stream.thread_type = thread_type
        if thread_count:
            stream.codec_context.thread_count = thread_count
        rate = stream.average_rate or stream.guessed_rate
        self.fps = float(rate) if rate and 0 < float(rate) < 1000 else None
        self.declared_frames = int(stream.frames or 0)
        self._container = container
        self._frames = self._decode(container, stream)
        self._index, self._pts0, self.size, self.shortfall = 0, None, None, None
        self._t0 = time.monotonic()
        if self.kind == "file":
            # A file that opens but decodes nothing (truncated, not a video) is an error, not an empty stream.
            first = self.read()
            if first is None:
                self.close()
                raise SourceError(f"could not decode any frame from {self.description}")
            self._pending = first

    def read(self) -> Frame | None:
        """Decode the next frame.

        Returns:
            The frame as ``(H, W, 3)`` uint8 BGR with its index and pts in seconds (from the file's first
            frame; for live streams, since open), or None at the end of the stream, after a read error or
            after MAX_CONSECUTIVE_BAD undecodable packets (``shortfall`` says why a file ended early).
        """
        if self._pending is not None:
            frame, self._pending = self._pending, None
            return frame
        if self._frames is None:
            return None
        av_frame = next(self._frames, None)
        if av_frame is None:
            self._frames = None
            self._note_end()
            return None
        size = (av_frame.width, av_frame.height)
        scaled = fit_size(size, self.fit_within) if self.fit_within else size
        if scaled != size:  # one swscale pass converts and scales (measured ~0.8 ms less a 1080p frame)
            image = av_frame.to_ndarray(format="bgr24", width=scaled[0], height=scaled[1], interpolation="AREA")
        else:
            image = av_frame.to_ndarray(format="bgr24")
        if self.size is not None and size != self.size:
            self.resolution_changes += 1
            log.warning(
                "%s: resolution changed from %dx%d to %dx%d at frame %d; carrying on at the new size",
                self.description, *self.size, *size, self._index,
            )  # fmt: skip
        self.size = size
        if self.is_live:
            pts = time.monotonic() - self._t0
        else:
            t = av_frame.time
            if t is None:
                pts = self._index / (self.fps or 25.0)
            else:
                if self._pts0 is None:
                    self._pts0 = float(t)  # MPEG-TS and cut files start at a non-zero time
                pts = float(t) - self._pts0
        frame = Frame(image, self._index, pts)
        self._index += 1
        return frame

    def _decode(self, container: av.container.InputContainer, stream: av.VideoStream) -> Iterator[av.VideoFrame]:
        """Decoded frames; a packet that fails to decode is skipped and counted as corrupt."""
        bad = 0
        try:
            for packet in container.demux(stream):
                try:
                    frames = packet.decode()
                except av.error.FFmpegError as exc:
                    if isinstance(exc, av.error.EOFError):
                        return
                    self.corrupt += 1
                    bad += 1
                    if bad >= MAX_CONSECUTIVE_BAD:
                        log.warning("%s: %d bad packets in a row; treating as end of stream", self.description, bad)
                        return
                    continue
                for f in frames:
                    bad = 0
                    yield f
        except (av.error.FFmpegError, OSError) as exc:  # a read failed: a live stream reconnects, a file ends
            if self.is_live:
                log.debug("%s: read failed: %s", self.description, _reason(exc))
            else:
                self.shortfall = f"{self.description}: read failed after frame {self._index}: {_reason(exc)}"

    def _note_end(self) -> None:
        if self.kind == "file" and self.shortfall is None and declared_shortfall(self._index, self.declared_frames):
            self.shortfall = (
                f"{self.description} ended after {self._index} of its {self.declared_frames} declared frames "
                "(truncated or damaged file)"
            )

    def close(self) -> None:
        """Close the container; idempotent, and ``open()`` may be called again."""
        self._frames = None
        self._pending = None
        if self._container is not None:
            self._container.close()
            self._container = None


def _check_readable_file(p: Path) -> None:
    if not p.exists():
        raise SourceError(f"video file {p} does not exist")
    if not p.is_file():
        raise SourceError(f"{p} is not a file")
    try:
        with p.open("rb"):
            pass
    except OSError as exc:
        raise SourceError(f"cannot read video file {p}: {exc.strerror}") from exc


def _reason(exc: BaseException) -> str:
    """FFmpeg's reason without the URL it repeats (which may hold credentials)."""
    text = getattr(exc, "strerror", None) or str(exc)
    return redact_url(str(text))
