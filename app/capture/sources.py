"""Frame sources: cameras, streams, files, images. Each yields BGR uint8 frames with an index and pts.

A source only reads; pacing, looping and reconnecting are the capture loop's job, so `vigil detect` can
use the same sources to read every frame of a file as fast as possible.
"""

from __future__ import annotations

import logging
import os
import re
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import cv2
import numpy as np

from app.config import redact_url

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
_URL_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
# A GStreamer pipeline links its elements with ' ! ' (gst-launch syntax); OpenCV needs it to end in appsink.
_GST_LINK = re.compile(r"\s!\s")
MAX_CONSECUTIVE_BAD = 50  # then a source reports end of stream so the caller reconnects


class SourceError(RuntimeError):
    """A source could not be opened or read; the message names it (credentials redacted)."""


@dataclass(slots=True)
class Frame:
    """One frame as a source delivers it, before pacing and the ring."""

    image: np.ndarray  # HxWx3 uint8 BGR
    index: int  # frame index within the source
    pts: float  # seconds within the source
    file: str | None = None  # the image file it came from (image and folder sources)


def as_bgr(image: np.ndarray | None) -> np.ndarray | None:
    """Normalise a decoded image to HxWx3 uint8 BGR; None if it is not a usable frame.

    Grey ``(H, W)`` or ``(H, W, 1)`` and BGRA ``(H, W, 4)`` are converted, uint16 samples keep their high
    byte; other dtypes, shapes and empty arrays give None.
    """
    if image is None or not isinstance(image, np.ndarray) or image.size == 0:
        return None
    if image.dtype != np.uint8:
        if image.dtype == np.uint16:
            image = (image >> 8).astype(np.uint8)
        else:
            return None
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if image.ndim == 3 and image.shape[2] == 1:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    return None


# Decode flags for still images: IMREAD_COLOR applies the EXIF orientation (phones store pixels sideways
# and set Orientation 2-8; IMREAD_UNCHANGED ignores it), IMREAD_ANYDEPTH keeps 16-bit samples for as_bgr
# to scale, grey becomes BGR and an alpha channel is dropped.
IMAGE_DECODE_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH


def is_truncated_image(data: bytes | memoryview | np.ndarray) -> bool:
    """True when an encoded JPEG, PNG or WebP ends before its own end marker (a partial upload or copy).

    Decoders fill the missing part of a truncated JPEG with grey and return it as if it were whole; a
    detector then sees half a picture. The file's own structure is walked to find where the image ends
    (JPEG segments to EOI, PNG chunks to IEND, WebP's RIFF size), so data after the image (a Motion
    Photo's video, a maker's trailer) is no truncation and an EOI inside an embedded thumbnail does not
    count. Other formats are not checked.
    """
    # cast: numpy's stubs declare ndarray's buffer protocol (__buffer__) only for Python >= 3.12.
    b = bytes(memoryview(cast(bytes, data)).cast("B"))
    if b[:3] == b"\xff\xd8\xff":
        return _jpeg_end(b) is None
    if b[:8] == b"\x89PNG\r\n\x1a\n":
        return _png_end(b) is None
    if b[:4] == b"RIFF" and b[8:12] == b"WEBP":
        return int.from_bytes(b[4:8], "little") + 8 > len(b)
    return False


def _jpeg_end(b: bytes) -> int | None:
    """Offset just past the JPEG's EOI marker, or None when the data ends first (ITU T.81, annex B)."""
    pos, n = 2, len(b)
    while pos + 2 <= n:
        if b[pos] != 0xFF:
            return None  # not a marker where one must be: damaged
        marker = b[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:
            return pos + 2
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # RSTn, TEM: no length
            pos += 2
            continue
        if pos + 4 > n:
            return None
        pos += 2 + int.from_bytes(b[pos + 2 : pos + 4], "big")
        if marker == 0xDA:  # start of scan: entropy-coded data up to the next marker that is not RSTn/stuffing
            while True:
                pos = b.find(b"\xff", pos)
                if pos < 0 or pos + 1 >= n:
                    return None
                nxt = b[pos + 1]
                if nxt == 0x00 or 0xD0 <= nxt <= 0xD7 or nxt == 0xFF:
                    pos += 1 if nxt == 0xFF else 2
                    continue
                break
    return None


def _png_end(b: bytes) -> int | None:
    """Offset just past the PNG's IEND chunk, or None when the data ends first."""
    pos, n = 8, len(b)
    while pos + 12 <= n:
        length = int.from_bytes(b[pos : pos + 4], "big")
        end = pos + 12 + length
        if end > n:
            return None
        if b[pos + 4 : pos + 8] == b"IEND":
            return end
        pos = end
    return None


def decode_image(data: bytes | memoryview | np.ndarray) -> np.ndarray | None:
    """An encoded still image (JPEG, PNG, WebP, BMP, TIFF) as HxWx3 uint8 BGR, EXIF orientation applied.

    Grey, 16-bit and alpha images work (see `as_bgr`). Returns None for anything that is not a whole,
    decodable image: empty data, unknown formats and truncated files (`is_truncated_image`). The one
    decoder for still images, so every command and API sees the same pixels for the same file.
    """
    buf = np.frombuffer(data, np.uint8)
    if buf.size == 0 or is_truncated_image(buf):
        return None
    try:
        return as_bgr(cv2.imdecode(buf, IMAGE_DECODE_FLAGS))
    except cv2.error:  # e.g. a header claiming more pixels than OpenCV's decode limit: not a usable image
        return None


def read_image(path: str | Path) -> np.ndarray | None:
    """`decode_image` of a file; None when it cannot be read or decoded."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    return decode_image(data)


class FrameSource(ABC):
    """A reader of frames from one camera, stream, file or folder; opened, read until None, closed.

    Attributes:
        description: Human-readable name for logs and errors, credentials redacted.
        is_live: True for cameras and streams (reconnected when they end; never paced).
        fps: The source's nominal frame rate, if it declares a plausible one (0 < fps < 1000).
        corrupt: Unreadable frames or files skipped so far; the capture loop adds it to its counters and
            resets it.
        shortfall: Why a finite source ended early (a truncated file), if it did.
        fit_within: ``(width, height)`` bound set by the capture loop; a source that can scale while it
            converts does so (the loop downscales whatever still comes larger).
        size: ``(width, height)`` of the last frame as decoded, before scaling, if known.
    """

    description: str = ""
    is_live: bool = False
    fps: float | None = None

    def __init__(self) -> None:
        self.corrupt = 0  # unreadable frames or files skipped so far (the reader resets it once counted)
        self.shortfall: str | None = None  # why a finite source ended early (a truncated file), if it did
        # (width, height) frames should fit in; a source that can scale while it converts does so (the
        # capture loop downscales whatever still comes larger)
        self.fit_within: tuple[int, int] | None = None
        self.size: tuple[int, int] | None = None  # (width, height) of the last frame as decoded, if known

    @abstractmethod
    def open(self) -> None:
        """Open (or reopen) the source.

        Raises:
            SourceError: It cannot be opened; the message names it and says why.
        """

    @abstractmethod
    def read(self) -> Frame | None:
        """Read the next frame.

        Returns:
            The next frame (``image`` ``(H, W, 3)`` uint8 BGR), or None at the end of the stream or after
            MAX_CONSECUTIVE_BAD bad frames in a row.

        Raises:
            SourceError: A single-image source cannot decode its file.
        """

    @abstractmethod
    def close(self) -> None:
        """Release the source; idempotent."""

    def __enter__(self) -> FrameSource:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class VideoCaptureSource(FrameSource):
    """OpenCV VideoCapture for live devices: V4L2 cameras and GStreamer pipelines.

    Files and network streams go through FFmpeg directly, see `app.capture.ffmpeg`. Frame pts is seconds
    since open, on the monotonic clock.

    Args:
        target: Camera index, device path or GStreamer pipeline ending in appsink.
        kind: ``"camera"`` or ``"gstreamer"`` (which selects OpenCV's GStreamer backend).
        is_live: Whether the capture loop treats its end as a disconnect.
    """

    def __init__(self, target: str | int, *, kind: str, is_live: bool = True) -> None:
        super().__init__()
        self.target = target
        self.kind = kind
        self.is_live = is_live
        self.description = f"{kind} {redact_url(str(target))}"
        self._cap: cv2.VideoCapture | None = None
        self._index = 0
        self._t0 = 0.0

    def open(self) -> None:
        """Open the device or pipeline.

        Raises:
            SourceError: OpenCV could not open it.
        """
        self.close()
        if self.kind == "gstreamer":
            cap = cv2.VideoCapture(str(self.target), cv2.CAP_GSTREAMER)
        else:
            cap = cv2.VideoCapture(self.target)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"OpenCV could not open {self.description}")
        fps = cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and 0 < fps < 1000 else None
        self._cap = cap
        self._index = 0
        self._t0 = time.monotonic()

    def read(self) -> Frame | None:
        """Read the next good frame, skipping and counting up to MAX_CONSECUTIVE_BAD bad ones; None after."""
        cap = self._cap
        if cap is None:
            return None
        bad = 0
        while bad < MAX_CONSECUTIVE_BAD:
            ok, raw = cap.read()
            image = as_bgr(raw) if ok else None
            if image is None:
                bad += 1
                self.corrupt += 1
                continue
            frame = Frame(image, self._index, time.monotonic() - self._t0)
            self._index += 1
            return frame
        log.warning("%s: %d bad frames in a row; treating as end of stream", self.description, bad)
        return None

    def close(self) -> None:
        """Release the capture device."""
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class ImageFileSource(FrameSource):
    """One still image, delivered once as frame 0 (pts 0).

    Args:
        path: The image file (JPEG, PNG, WebP, BMP, TIFF).
    """

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self.description = f"image {path}"
        self._done = False

    def open(self) -> None:
        """Check the file exists; decoding happens on ``read``.

        Raises:
            SourceError: ``path`` is not a file.
        """
        if not self.path.is_file():
            raise SourceError(f"image file {self.path} does not exist")
        self._done = False

    def read(self) -> Frame | None:
        """Decode the image on the first call; None after.

        Raises:
            SourceError: The file is not a whole, decodable image (it is also counted as corrupt).
        """
        if self._done:
            return None
        self._done = True
        image = read_image(self.path)
        if image is None:
            self.corrupt += 1
            raise SourceError(f"could not decode image {self.path} (not a whole image file)")
        return Frame(image, 0, 0.0, file=self.path.name)

    def close(self) -> None:
        """End the source (``read`` returns None until reopened)."""
        self._done = True


class ImageFolderSource(FrameSource):
    """Image files of a folder in name order; files that fail to decode are skipped and counted.

    Args:
        path: The folder; only files with an IMAGE_EXTENSIONS suffix are read, subfolders are not.
        fps: Rate the frames' pts are spaced at (frame n has pts ``n / fps`` seconds).
    """

    def __init__(self, path: Path, fps: float = 1.0) -> None:
        super().__init__()
        self.path = path
        self.fps = fps
        self.description = f"image folder {path}"
        self._files: list[Path] = []
        self._pos = 0
        self._index = 0

    def open(self) -> None:
        """List the folder's images (once per open: later additions are seen on the next open).

        Raises:
            SourceError: ``path`` is not a folder or holds no image files.
        """
        if not self.path.is_dir():
            raise SourceError(f"image folder {self.path} does not exist")
        self._files = sorted(p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not self._files:
            raise SourceError(f"image folder {self.path} has no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        self._pos = 0
        self._index = 0

    def read(self) -> Frame | None:
        """Decode the next readable image, skipping and counting undecodable ones; None after the last."""
        while self._pos < len(self._files):
            f = self._files[self._pos]
            self._pos += 1
            image = read_image(f)
            if image is None:
                self.corrupt += 1
                log.warning("skipping %s: not a readable image", f)
                continue
            frame = Frame(image, self._index, self._index / (self.fps or 1.0), file=f.name)
            self._index += 1
            return frame
        return None

    def close(self) -> None:
        """End the source (``read`` returns None until reopened)."""
        self._pos = len(self._files)


def open_source(source: str | int) -> FrameSource:
    """Classify a source (without opening it).

    An existing path is always what it is on disk (a folder, an image, a video file, or a V4L2 device
    node), whatever characters its name has: `alarm!.mp4` is a file, not a GStreamer pipeline. Only a
    string that names nothing on disk is read as a camera index, a stream URL or, when it links
    elements with ' ! ' (or names an appsink), a pipeline.

    Args:
        source: A camera index, device node, file or folder path, ``file://`` or stream URL, or GStreamer
            pipeline.

    Returns:
        The matching source, not yet opened; problems such as a missing file surface on ``open()``.
    """
    if isinstance(source, int):
        return VideoCaptureSource(source, kind="camera", is_live=True)
    raw = str(source)
    for candidate in (raw, raw.strip()):
        if candidate and os.path.lexists(candidate):
            return _path_source(Path(candidate))
    s = raw.strip()
    if s.isdigit():
        return VideoCaptureSource(int(s), kind="camera", is_live=True)
    if s.startswith("/dev/video"):
        return VideoCaptureSource(s, kind="camera", is_live=True)
    scheme = _URL_SCHEME.match(s)
    if scheme and scheme.group(1).lower() == "file":
        return _path_source(Path(s[len(scheme.group(0)) :]))
    if scheme:  # rtsp, rtsps, rtmp(s), http(s), srt, udp, tcp, rtp...: whatever FFmpeg can open
        from app.capture.ffmpeg import AvSource

        # FFmpeg matches protocol names case-sensitively: RTSP://... would never connect.
        return AvSource(scheme.group(1).lower() + s[len(scheme.group(1)) :], kind="stream", is_live=True)
    if _GST_LINK.search(s) or ("!" in s and "appsink" in s):
        return VideoCaptureSource(s, kind="gstreamer", is_live=True)
    return _path_source(Path(s))  # not there (yet): opening says so, or a capture loop retries


def _path_source(p: Path) -> FrameSource:
    if p.is_dir():
        return ImageFolderSource(p)
    if p.is_char_device():  # /dev/video0 or a udev alias such as /dev/v4l/by-id/...
        return VideoCaptureSource(str(p), kind="camera", is_live=True)
    if p.suffix.lower() in IMAGE_EXTENSIONS:
        return ImageFileSource(p)
    from app.capture.ffmpeg import AvSource  # imports this module

    return AvSource(str(p), kind="file", is_live=False)
