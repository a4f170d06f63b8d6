"""Real video clips for motion tests and benches: a still scene, a mover, a lighting step, a masked mover.

Every clip is written with OpenCV (mp4v) to the path given, from one frame of calibration/samples/bikes.mp4
(or bikes.mp4 itself), with sensor noise on every frame so that "still" is realistic rather than
bit-identical. The functions return a `Clip` that says what was drawn where (the moving object's box per
frame in pixels, the frame of a lighting step), so tests can check the detector against ground truth.
Keep them small (320x240, a few seconds): they are written at test time.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

SAMPLE_VIDEO = Path(__file__).resolve().parents[2] / "calibration" / "samples" / "bikes.mp4"

Box = tuple[int, int, int, int]  # xyxy px


@dataclass(frozen=True)
class Clip:
    """A written clip and its ground truth.

    Attributes:
        path: The MP4 file.
        size: (w, h) px.
        fps: Frames per second it is written at.
        frames: Number of frames.
        object_boxes: Per frame, the xyxy px box of the synthetic moving object (None where there is none);
            empty for clips without one (still, lighting, bikes.mp4 itself).
        step_frame: The first frame of a lighting step (None without one).
    """

    path: Path
    size: tuple[int, int]
    fps: float
    frames: int
    object_boxes: tuple[Box | None, ...] = ()
    step_frame: int | None = None


def still_frame(size: tuple[int, int], index: int = 40) -> np.ndarray:
    """Frame `index` of bikes.mp4 resized to `size` (w, h): the background of every synthetic clip, BGR."""
    cap = cv2.VideoCapture(str(SAMPLE_VIDEO))
    try:
        cap.set(cv2.CAP_PROP_POS_FRAMES, index)
        ok, frame = cap.read()
    finally:
        cap.release()
    if not ok:
        raise FileNotFoundError(f"cannot read frame {index} of {SAMPLE_VIDEO}")
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA)


def read_frames(path: Path) -> Iterator[np.ndarray]:
    """Every frame of a video file, BGR, as OpenCV decodes it."""
    cap = cv2.VideoCapture(str(path))
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                return
            yield frame
    finally:
        cap.release()


def static_clip(
    path: Path,
    seconds: float = 3.0,
    size: tuple[int, int] = (320, 240),
    fps: float = 10.0,
    noise_sigma: float = 2.5,
    jpeg_quality: int | None = None,
    seed: int = 0,
) -> Clip:
    """One frame of bikes.mp4 held still: only sensor noise (Gaussian, `noise_sigma` grey levels) changes.

    Args:
        jpeg_quality: Also pass every frame through JPEG at this quality (block artefacts that move with the
            noise, like a camera's MJPEG stream); None for none.
    """
    rng = np.random.default_rng(seed)
    base = still_frame(size).astype(np.float32)
    n = _count(seconds, fps)
    frames = (_jpeg(_noisy(base, noise_sigma, rng), jpeg_quality) for _ in range(n))
    _write(path, frames, size, fps)
    return Clip(path, size, fps, n)


def moving_clip(
    path: Path,
    seconds: float = 3.0,
    size: tuple[int, int] = (320, 240),
    fps: float = 10.0,
    noise_sigma: float = 2.5,
    object_size: tuple[int, int] | None = None,
    region: Sequence[Sequence[float]] | None = None,
    lead_frames: int = 5,
    lighting_step: tuple[int, float] | None = None,
    seed: int = 0,
) -> Clip:
    """A still bikes.mp4 frame with a person-sized mover crossing it.

    After `lead_frames` of the scene alone, a block of dark and light patches enters at the left edge, crosses
    the frame at a steady pace and leaves at the right edge on the last frame.

    Args:
        object_size: (w, h) px of the block; about 1/8 x 1/3 of the frame when None.
        region: A polygon (0..1 of the frame): the block is seen only inside it (elsewhere the background
            shows), so motion happens only there; None: everywhere. `object_boxes` are then the parts inside
            the polygon's bounding box (None where the block is outside it).
        lighting_step: (frame, gain): from that frame on the whole picture, mover included, is `gain` times as
            bright (as in `lighting_step_clip`); `step_frame` says which.
    """
    rng = np.random.default_rng(seed)
    w, h = size
    ow, oh = object_size or (max(8, w // 8), max(8, h // 3))
    base = still_frame(size).astype(np.float32)
    block = _texture((oh, ow), rng)
    inside = None
    if region is not None:
        inside = np.zeros((h, w), np.uint8)
        cv2.fillPoly(inside, [np.round(np.asarray(region, np.float32) * [w, h]).astype(np.int32)], 1)
    n = _count(seconds, fps)
    y = (h - oh) // 2
    boxes: list[Box | None] = []

    moving = max(2, n - lead_frames)

    def frames() -> Iterator[np.ndarray]:
        for i in range(n):
            img = base.copy()
            box: Box | None = None
            if i >= lead_frames:  # its left edge goes from just inside the left edge to just inside the right one
                x = -ow + 1 + round((i - lead_frames) * (w + ow - 2) / (moving - 1))
                x1, x2 = max(0, x), min(w, x + ow)
                sel = np.ones((oh, x2 - x1), bool) if inside is None else inside[y : y + oh, x1:x2].astype(bool)
                img[y : y + oh, x1:x2][sel] = block[:, x1 - x : x2 - x][sel]
                ys, xs = np.nonzero(sel)
                if len(xs):
                    box = (x1 + int(xs.min()), y + int(ys.min()), x1 + int(xs.max()) + 1, y + int(ys.max()) + 1)
            boxes.append(box)
            if lighting_step is not None and i >= lighting_step[0]:
                img *= lighting_step[1]
            yield _noisy(img, noise_sigma, rng)

    _write(path, frames(), size, fps)
    return Clip(path, size, fps, n, tuple(boxes), None if lighting_step is None else lighting_step[0])


def lighting_step_clip(
    path: Path,
    seconds: float = 4.0,
    size: tuple[int, int] = (320, 240),
    fps: float = 10.0,
    gain: float = 0.4,
    step_frame: int | None = None,
    noise_sigma: float = 2.5,
    seed: int = 0,
) -> Clip:
    """A still scene whose brightness jumps at once by `gain` (x0.4: an IR switch or a cloud; x2: lights on).

    Args:
        step_frame: The first frame at the new brightness; the middle of the clip when None.
    """
    rng = np.random.default_rng(seed)
    base = still_frame(size).astype(np.float32)
    n = _count(seconds, fps)
    step = n // 2 if step_frame is None else step_frame
    frames = (_noisy(base * (gain if i >= step else 1.0), noise_sigma, rng) for i in range(n))
    _write(path, frames, size, fps)
    return Clip(path, size, fps, n, step_frame=step)


def bikes_clip(path: Path, seconds: float = 3.0, size: tuple[int, int] = (320, 240), fps: float = 10.0) -> Clip:
    """bikes.mp4 itself (real traffic, 25 fps source), resized and resampled to `fps`, from its start."""
    src = list(read_frames(SAMPLE_VIDEO))
    n = _count(seconds, fps)
    picks = [src[min(len(src) - 1, round(i * 25.0 / fps))] for i in range(n)]
    _write(path, (cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in picks), size, fps)
    return Clip(path, size, fps, n)


# ---- helpers -------------------------------------------------------------------------------------------


def _count(seconds: float, fps: float) -> int:
    return max(2, round(seconds * fps))


def _noisy(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    noise = rng.normal(0.0, sigma, img.shape).astype(np.float32) if sigma > 0 else 0.0
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def _jpeg(img: np.ndarray, quality: int | None) -> np.ndarray:
    if quality is None:
        return img
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)


def _texture(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A block of coarse dark and light patches (clothes, not a flat colour), BGR float32: on any background most
    of its patches differ from what they cover."""
    h, w = shape
    gh, gw = max(1, h // 6), max(1, w // 6)
    dark = rng.uniform(10, 40, (gh, gw, 1))
    light = rng.uniform(200, 245, (gh, gw, 1))
    coarse = np.where(rng.random((gh, gw, 1)) < 0.5, dark, light).repeat(3, axis=2).astype(np.float32)
    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_NEAREST)


def _write(path: Path, frames: Iterator[np.ndarray], size: tuple[int, int], fps: float) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write mp4v to {path}")
    try:
        for frame in frames:
            writer.write(frame)
    finally:
        writer.release()
