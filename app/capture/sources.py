"""Frame sources: cameras, streams, files, images. Each yields BGR uint8 frames with an index and pts.

A source only reads; pacing, looping and reconnecting are the capture loop's job, so `vigil detect` can
use the same sources to read every frame of a file as fast as possible.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from app.config import redact_url

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://")
MAX_CONSECUTIVE_BAD = 50  # then a source reports end of stream so the caller reconnects


class SourceError(RuntimeError):
    """A source could not be opened or read; the message names it (credentials redacted)."""


@dataclass(slots=True)
class Frame:
    image: np.ndarray  # HxWx3 uint8 BGR
    index: int  # frame index within the source
    pts: float  # seconds within the source


def as_bgr(image: np.ndarray | None) -> np.ndarray | None:
    """Normalise a decoded image to HxWx3 uint8 BGR; None if it is not a usable frame."""
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


class FrameSource(ABC):
    description: str = ""
    is_live: bool = False
    fps: float | None = None

    def __init__(self) -> None:
        self.corrupt = 0

    @abstractmethod
    def open(self) -> None:
        """Open the source; raises SourceError with a clear reason."""

    @abstractmethod
    def read(self) -> Frame | None:
        """The next frame, or None at the end of the stream (or after too many bad frames)."""

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> FrameSource:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class VideoCaptureSource(FrameSource):
    """OpenCV VideoCapture: V4L2 devices, network streams, video files and GStreamer pipelines."""

    def __init__(self, target: str | int, *, kind: str, is_live: bool) -> None:
        super().__init__()
        self.target = target
        self.kind = kind
        self.is_live = is_live
        self.description = f"{kind} {redact_url(str(target))}"
        self._cap: cv2.VideoCapture | None = None
        self._pending: Frame | None = None
        self._index = 0
        self._t0 = 0.0

    def open(self) -> None:
        self.close()
        if self.kind == "file":
            p = Path(str(self.target))
            if not p.exists():
                raise SourceError(f"video file {p} does not exist")
            if not p.is_file():
                raise SourceError(f"{p} is not a file")
            try:
                with p.open("rb"):
                    pass
            except OSError as exc:
                raise SourceError(f"cannot read video file {p}: {exc.strerror}") from exc
        if self.kind == "gstreamer":
            cap = cv2.VideoCapture(str(self.target), cv2.CAP_GSTREAMER)
        elif self.kind == "stream":
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 10000, cv2.CAP_PROP_READ_TIMEOUT_MSEC, 10000]
            cap = cv2.VideoCapture(str(self.target), cv2.CAP_FFMPEG, params)
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
        if self.kind == "file":
            # A file that opens but decodes nothing (truncated, not a video) is an error, not an empty stream.
            first = self.read()
            if first is None:
                self.close()
                raise SourceError(f"could not decode any frame from {self.description}")
            self._pending = first

    def read(self) -> Frame | None:
        if self._pending is not None:
            frame, self._pending = self._pending, None
            return frame
        cap = self._cap
        if cap is None:
            return None
        bad = 0
        while bad < MAX_CONSECUTIVE_BAD:
            ok, image = cap.read()
            if not ok:
                if self.kind == "file":
                    return None  # end of file (or of the decodable part of a truncated file)
                bad += 1
                self.corrupt += 1
                continue
            image = as_bgr(image)
            if image is None:
                bad += 1
                self.corrupt += 1
                continue
            if self.kind == "file":
                pts = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
                if pts <= 0 and self._index > 0 and self.fps:
                    pts = self._index / self.fps
            else:
                pts = time.monotonic() - self._t0
            frame = Frame(image, self._index, pts)
            self._index += 1
            return frame
        log.warning("%s: %d bad frames in a row; treating as end of stream", self.description, bad)
        return None

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class ImageFileSource(FrameSource):
    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self.description = f"image {path}"
        self._done = False

    def open(self) -> None:
        if not self.path.is_file():
            raise SourceError(f"image file {self.path} does not exist")
        self._done = False

    def read(self) -> Frame | None:
        if self._done:
            return None
        self._done = True
        image = as_bgr(cv2.imread(str(self.path), cv2.IMREAD_UNCHANGED))
        if image is None:
            self.corrupt += 1
            raise SourceError(f"could not decode image {self.path}")
        return Frame(image, 0, 0.0)

    def close(self) -> None:
        self._done = True


class ImageFolderSource(FrameSource):
    """Image files of a folder in name order; files that fail to decode are skipped and counted."""

    def __init__(self, path: Path, fps: float = 1.0) -> None:
        super().__init__()
        self.path = path
        self.fps = fps
        self.description = f"image folder {path}"
        self._files: list[Path] = []
        self._pos = 0
        self._index = 0

    def open(self) -> None:
        if not self.path.is_dir():
            raise SourceError(f"image folder {self.path} does not exist")
        self._files = sorted(p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not self._files:
            raise SourceError(f"image folder {self.path} has no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        self._pos = 0
        self._index = 0

    def read(self) -> Frame | None:
        while self._pos < len(self._files):
            f = self._files[self._pos]
            self._pos += 1
            image = as_bgr(cv2.imread(str(f), cv2.IMREAD_UNCHANGED))
            if image is None:
                self.corrupt += 1
                log.warning("skipping %s: not a readable image", f)
                continue
            frame = Frame(image, self._index, self._index / (self.fps or 1.0))
            self._index += 1
            return frame
        return None

    def close(self) -> None:
        self._pos = len(self._files)


def open_source(source: str | int) -> FrameSource:
    """Classify a source string (without opening it)."""
    if isinstance(source, int) or (isinstance(source, str) and source.strip().isdigit()):
        return VideoCaptureSource(int(source), kind="camera", is_live=True)
    s = str(source).strip()
    if s.startswith("/dev/video"):
        return VideoCaptureSource(s, kind="camera", is_live=True)
    if s.lower().startswith(STREAM_SCHEMES):
        return VideoCaptureSource(s, kind="stream", is_live=True)
    if "!" in s:
        return VideoCaptureSource(s, kind="gstreamer", is_live=True)
    p = Path(s)
    if p.is_dir():
        return ImageFolderSource(p)
    if p.suffix.lower() in IMAGE_EXTENSIONS:
        return ImageFileSource(p)
    return VideoCaptureSource(s, kind="file", is_live=False)
