"""Inputs that broke Vigil in the field (see ../shared/field-cases/README.md), made here from real frames
so nothing binary is committed: phone JPEGs with EXIF orientations, variable-frame-rate files, a stream
whose resolution changes, a truncated recording."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from app.engine.calibrate import frames_at


def video_frames(video: Path, indices: Sequence[int]) -> list[np.ndarray]:
    """BGR frames of a real video at these indices (in the order asked)."""
    found = dict(frames_at(video, indices))
    return [found[i] for i in indices]


# ---- EXIF orientation ------------------------------------------------------------------------------

# How to store an upright picture so that a viewer applying EXIF orientation k shows it upright: the
# inverse of the display transform of each orientation (EXIF 2.32, tag 0x0112).
_STORE = {
    1: lambda u: u,
    2: lambda u: u[:, ::-1],
    3: lambda u: u[::-1, ::-1],
    4: lambda u: u[::-1],
    5: lambda u: u.transpose(1, 0, 2),
    6: lambda u: np.rot90(u, 1),  # displayed turned 90° clockwise, so stored 90° counter-clockwise
    7: lambda u: u[::-1, ::-1].transpose(1, 0, 2),
    8: lambda u: np.rot90(u, -1),
}


def exif_app1(orientation: int) -> bytes:
    """A JPEG APP1 segment holding an EXIF block with only the Orientation tag (little-endian TIFF)."""
    ifd = struct.pack("<H", 1) + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack("<I", 0)
    tiff = b"II*\x00" + struct.pack("<I", 8) + ifd
    payload = b"Exif\x00\x00" + tiff
    return b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload


def jpeg_with_orientation(upright: np.ndarray, orientation: int, quality: int = 95) -> bytes:
    """A phone-style JPEG: pixels stored as a camera sensor would, plus the tag that turns them upright."""
    stored = np.ascontiguousarray(_STORE[orientation](upright))
    jpeg = cv2.imencode(".jpg", stored, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()
    assert jpeg[:2] == b"\xff\xd8"
    return jpeg[:2] + exif_app1(orientation) + jpeg[2:]


# ---- videos ----------------------------------------------------------------------------------------


def _write(path: Path, segments: Sequence[tuple[Sequence[np.ndarray], Sequence[float]]], *, fmt: str | None = None,
           options: dict[str, str] | None = None) -> Path:  # fmt: skip
    """H.264 with each frame at its own time (seconds); a new segment starts a new encoder (new size)."""
    with av.open(str(path), "w", format=fmt, options=options or {}) as out:
        stream = None
        for frames, times in segments:
            h, w = frames[0].shape[:2]
            if stream is None:
                stream = out.add_stream("libx264", rate=25)
                stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
                stream.time_base = Fraction(1, 1000)
                stream.codec_context.options = {"bf": "0", "g": "25"}
            for image, t in zip(frames, times):
                frame = av.VideoFrame.from_ndarray(image, format="bgr24")
                frame.pts, frame.time_base = round(t * 1000), Fraction(1, 1000)
                out.mux(stream.encode(frame))
        assert stream is not None
        out.mux(stream.encode(None))
    return path


def make_vfr(path: Path, frames: Sequence[np.ndarray], fast: int = 25, slow: int = 25) -> Path:
    """`fast` frames 0.04 s apart, then `slow` frames 0.4 s apart (the field case: 50 frames, ~10.6 s)."""
    times = [i * 0.04 for i in range(fast)]
    times += [times[-1] + 0.4 * (i + 1) for i in range(slow)]
    picks = [frames[i % len(frames)] for i in range(fast + slow)]
    return _write(path, [(picks, times)])


def make_resolution_change_ts(path: Path, frames: Sequence[np.ndarray], seconds: float = 2.0) -> Path:
    """One MPEG-TS stream whose resolution changes after `seconds` from WxH to Wx(H*480/272), as when a
    camera's stream profile is changed: two H.264 segments concatenated, timestamps continuing."""
    n = round(seconds * 25)
    first = [frames[i % len(frames)] for i in range(n)]
    h, w = first[0].shape[:2]
    second = [cv2.resize(f, (w, h * 480 // 272)) for f in first]
    a, b = path.with_suffix(".a.ts"), path.with_suffix(".b.ts")
    _write(a, [(first, [i * 0.04 for i in range(n)])], fmt="mpegts")
    _write(b, [(second, [seconds + i * 0.04 for i in range(n)])], fmt="mpegts")
    path.write_bytes(a.read_bytes() + b.read_bytes())
    a.unlink()
    b.unlink()
    return path


def make_truncated_mp4(path: Path, frames: Sequence[np.ndarray], count: int = 100) -> tuple[Path, int]:
    """A faststart MP4 (index first, as cameras and phones write them) cut to half its bytes; returns the
    path and the frame count its index still declares."""
    picks = [frames[i % len(frames)] for i in range(count)]
    _write(path, [(picks, [i * 0.04 for i in range(count)])], options={"movflags": "faststart"})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path, count
