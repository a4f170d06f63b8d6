"""Motion on a small greyscale copy of each frame: running-average background, frame differencing, boxes.

One `MotionDetector` per camera, fed every captured frame in the capture thread, before the frame is written
to the ring; its verdict and boxes travel with the frame to the worker (`FrameMeta.motion`/`motion_boxes`).
The work is sized to stay around 1 ms a frame even at 1080p: the frame is turned grey and shrunk to
`frame_height` px high (an integer-factor area average first, which OpenCV does fast and which averages the
sensor noise away, then a bilinear resize to the exact size), and everything else runs on that copy.

Per frame: contrast normalisation (a linear stretch between the 4th and 96th grey-level percentiles of the
frame itself, so a dark or flat scene uses the whole range and a global gain change mostly cancels out), a
light blur, the absolute difference against a running-average background (`frame_alpha`) with the frame's
global tone change taken out (see `_compensated_diff`), a threshold (`threshold` grey levels), the motion
mask, a dilation that joins the pieces of one mover, and the outer contours holding at least `contour_area`
changed px (of the small copy, counted before the dilation). Their bounding boxes, scaled back to frame
pixels, overlapping ones merged, at most `MAX_MOTION_BOXES`, are the motion boxes.

Calibration: the first `CALIBRATION_FRAMES` frames (after start or a new frame size) only learn the
background (it is the newest frame) and report no motion, so a camera still adjusting its exposure as it
opens does not read as motion.

Camera-level changes (an IR switch, a cloud, auto-exposure, lights on) do not read as motion everywhere
until the running average catches up. A change of the scene's global tone (gain, gamma, highlights
clipping) is taken out of every comparison; when it is large (more than `TONE_SHIFT_LIMIT` x `threshold`
grey levels on average), or when more than `lightning_threshold` of the unmasked copy changed at once, the
background restarts from the frame. That frame is a `lighting_change` with no motion when the change was
lighting alone (everything changed, or what still differs once compensated is specks); when a real change
remains (a cut, a pan) its motion counts, and the next frames are compared with the new scene.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import cv2
import numpy as np

from app.config import MotionConfig
from app.polygons import to_pixels
from app.ring import MAX_MOTION_BOXES
from app.types import Box

CALIBRATION_FRAMES = 3  # frames after start or a new frame size that only learn the background
TONE_SHIFT_LIMIT = 0.5  # a global tone change of more than this x `threshold` grey levels restarts the background
SCENE_CHANGE_FRACTION = 0.02  # ... and is lighting alone when less than this share still differs once compensated
CONTRAST_PERCENTILES = (4.0, 96.0)  # the grey levels stretched to 0 and 255
MIN_CONTRAST_SPAN = 48  # grey levels: a flat scene is stretched at most 255/48 ~ 5x (noise grows with it)
TONE_BINS = 32  # background grey levels are grouped 8 a bin to estimate the global tone change
MIN_BIN_PIXELS = 16  # bins with fewer pixels take their offset from their neighbours
_GRID = np.arange(256, dtype=np.float32)
_DILATE_KERNEL = np.ones((3, 3), np.uint8)
_DILATE_ITERATIONS = 2


@dataclass(frozen=True)
class MotionResult:
    """One frame's verdict.

    Attributes:
        motion: Something moved: at least one box (False while calibrating and on a lighting change).
        boxes: Where, xyxy in pixels of the frame given to `detect`; at most `MAX_MOTION_BOXES`, disjoint.
        changed_fraction: Share (0..1) of the unmasked small copy whose grey level changed by more than
            `threshold` against the background (before dilation).
        lighting_change: A camera-level lighting change: the background restarted from this frame, no motion.
        calibrating: One of the first frames, which only learn the background: no motion.
        ms: Time `detect` took, ms.
    """

    motion: bool
    boxes: tuple[Box, ...]
    changed_fraction: float
    lighting_change: bool
    calibrating: bool = False
    ms: float = 0.0


class MotionDetector:
    """The motion detector of one camera (single thread: the camera's capture loop).

    Args:
        cfg: The camera's `motion` section (mask, frame height, threshold, contour area, alpha, lightning).
        frame_wh: Width and height in pixels of the frames `detect` will get; a frame of another size resets
            the detector to that size (a resolution change).

    Raises:
        ValueError: A frame size below 1 px.
    """

    def __init__(self, cfg: MotionConfig, frame_wh: tuple[int, int]) -> None:
        self.cfg = cfg
        self._resize(frame_wh)

    @property
    def frame_wh(self) -> tuple[int, int]:
        """The frame size (w, h) px the detector is set up for."""
        return self._frame_wh

    @property
    def small_wh(self) -> tuple[int, int]:
        """The size (w, h) px of the greyscale copy it works on."""
        return self._small_wh

    def _resize(self, frame_wh: tuple[int, int]) -> None:
        w, h = int(frame_wh[0]), int(frame_wh[1])
        if w < 1 or h < 1:
            raise ValueError(f"frame size must be at least 1x1 px, got {w}x{h}")
        self._frame_wh = (w, h)
        sh = min(self.cfg.frame_height, h)
        sw = max(1, round(w * sh / h))
        self._small_wh = (sw, sh)
        self._prescale = max(1, h // sh)  # integer area-average factor (fast path), then bilinear to size
        self._scale = (w / sw, h / sh)
        # The motion mask rasterised once per size: 255 where motion counts, 0 where it is ignored.
        keep = np.full((sh, sw), 255, np.uint8)
        if self.cfg.mask:
            polys = [np.round(to_pixels(p, sw, sh)).astype(np.int32) for p in self.cfg.mask]
            cv2.fillPoly(keep, polys, 0)
        self._keep = keep
        self._keep_count = max(1, cv2.countNonZero(keep))
        self._masked = bool(self.cfg.mask)
        self._background: np.ndarray | None = None  # float32 (sh, sw)
        self._calibrate_left = CALIBRATION_FRAMES

    def reset(self) -> None:
        """Forget the background: the next `CALIBRATION_FRAMES` frames learn it again (no motion reported)."""
        self._resize(self._frame_wh)

    def detect(self, frame_bgr: np.ndarray) -> MotionResult:
        """Compare one frame with the background, then learn it into the background.

        Args:
            frame_bgr: ``(H, W, 3)`` BGR or ``(H, W)`` grey uint8 frame, as written to the ring. Another size
                than the detector's resets it to that size first.

        Returns:
            The verdict, with boxes in pixels of `frame_bgr`.
        """
        t0 = time.perf_counter_ns()
        h, w = frame_bgr.shape[:2]
        if (w, h) != self._frame_wh:
            self._resize((w, h))
        raw = self._small_grey(frame_bgr)
        if self._calibrate_left > 0:
            self._calibrate_left -= 1
            self._learn_from(raw)
            return MotionResult(False, (), 0.0, False, True, _ms_since(t0))
        grey = self._normalised(raw)
        bg = self._bg()
        diff, tone_shift = self._compensated_diff(grey, cv2.convertScaleAbs(bg))
        changed = cv2.threshold(diff, self.cfg.threshold, 255, cv2.THRESH_BINARY)[1]
        if self._masked:
            changed = cv2.bitwise_and(changed, self._keep)
        fraction = cv2.countNonZero(changed) / self._keep_count
        everywhere = fraction > self.cfg.lightning_threshold
        if everywhere or tone_shift > TONE_SHIFT_LIMIT * self.cfg.threshold:
            # The whole scene changed: the background restarts from this frame rather than lag for a minute.
            self._background = grey.astype(np.float32)
            if everywhere or fraction < SCENE_CHANGE_FRACTION:  # lighting alone (what is left is specks)
                return MotionResult(False, (), fraction, True, False, _ms_since(t0))
            # Lighting and more (a cut, a pan, an IR switch that changes textures): this frame's motion
            # counts; the next frames are compared with the new scene.
        else:
            cv2.accumulateWeighted(grey, bg, self.cfg.frame_alpha)
        boxes = self._boxes(changed) if fraction > 0 else ()
        return MotionResult(bool(boxes), boxes, fraction, False, False, _ms_since(t0))

    # ---- steps ---------------------------------------------------------------------------------------

    def _bg(self) -> np.ndarray:
        assert self._background is not None  # set by the calibration frames before any comparison
        return self._background

    def _small_grey(self, frame: np.ndarray) -> np.ndarray:
        grey = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        k = self._prescale
        if k > 1:  # an integer factor takes OpenCV's fast area-average path (INTER_AREA at any factor is slow)
            h, w = grey.shape
            grey = cv2.resize(grey, (max(1, w // k), h // k), interpolation=cv2.INTER_AREA)
        if (grey.shape[1], grey.shape[0]) != self._small_wh:
            grey = cv2.resize(grey, self._small_wh, interpolation=cv2.INTER_LINEAR)
        return grey

    def _learn_from(self, raw: np.ndarray) -> None:
        """Restart the background from this frame alone."""
        self._background = self._normalised(raw).astype(np.float32)

    def _normalised(self, raw: np.ndarray) -> np.ndarray:
        """Contrast-stretched (when `improve_contrast`) and lightly blurred copy, uint8."""
        out = raw
        if self.cfg.improve_contrast:
            lo, hi = _percentiles(raw)
            span = max(hi - lo, MIN_CONTRAST_SPAN)
            lut = np.clip((np.arange(256, dtype=np.float32) - lo) * (255.0 / span), 0, 255).astype(np.uint8)
            out = cv2.LUT(raw, lut)
        return cv2.GaussianBlur(out, (3, 3), 0)

    def _compensated_diff(self, grey: np.ndarray, bg: np.ndarray) -> tuple[np.ndarray, float]:
        """|grey - background| with the frame's global tone change taken out (uint8), and that change's size.

        The size is the mean absolute tone offset over the unmasked pixels, in grey levels.

        A lighting change moves every part of the scene of one brightness the same way (a gain, a gamma,
        highlights clipping), a mover only its own pixels. So for the background's pixels of each brightness
        (`TONE_BINS` bins) the median grey level now against the median before is the lighting's share (a tone
        curve, interpolated between the bins), and only what differs from the curve counts.
        An object that covers most of the pixels of one brightness would be taken for lighting there; that
        takes a flat background and a very large object.
        """
        mask = self._keep if self._masked else None
        # Joint histogram: background brightness bin x current grey level (C, not numpy: this runs every frame).
        joint = cv2.calcHist([bg, grey], [0, 1], mask, [TONE_BINS, 256], [0, 256, 0, 256])
        counts = joint.sum(axis=1)
        populated = counts >= MIN_BIN_PIXELS
        if not populated.any():
            return cv2.absdiff(grey, bg), 0.0
        half = counts[:, None] / 2
        now = np.argmax(np.cumsum(joint, axis=1) >= half, axis=1)  # median grey level now, per bin
        levels = cv2.calcHist([bg], [0], mask, [256], [0, 256]).reshape(TONE_BINS, 256 // TONE_BINS)
        before = np.arange(0, 256, 256 // TONE_BINS) + np.argmax(np.cumsum(levels, axis=1) >= half, axis=1)
        offsets = (now - before)[populated].astype(np.float32)
        weights = counts[populated]
        shift = float(np.abs(offsets) @ weights / weights.sum())
        curve = np.clip(np.round(_GRID + np.interp(_GRID, before[populated], offsets)), 0, 255).astype(np.uint8)
        return cv2.absdiff(grey, cv2.LUT(bg, curve)), shift

    def _boxes(self, changed: np.ndarray) -> tuple[Box, ...]:
        grown = cv2.dilate(changed, _DILATE_KERNEL, iterations=_DILATE_ITERATIONS)
        if self._masked:  # dilation must not carry motion into the mask
            grown = cv2.bitwise_and(grown, self._keep)
        contours, _ = cv2.findContours(grown, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        sx, sy = self._scale
        fw, fh = self._frame_wh
        boxes: list[Box] = []
        for c in contours:
            x, y, bw, bh = cv2.boundingRect(c)
            if cv2.countNonZero(changed[y : y + bh, x : x + bw]) < self.cfg.contour_area:
                continue  # counted before the dilation, which would grow a speck of noise past any area
            boxes.append((
                max(0, math.floor(x * sx)), max(0, math.floor(y * sy)),
                min(fw, math.ceil((x + bw) * sx)), min(fh, math.ceil((y + bh) * sy)),
            ))  # fmt: skip
        return tuple(merge_boxes(boxes, MAX_MOTION_BOXES)) if boxes else ()


def merge_boxes(boxes: list[Box], limit: int) -> list[Box]:
    """Merge overlapping (or touching) boxes, then the smallest ones, until at most `limit` remain.

    Each group of transitively overlapping boxes becomes its union; then, while there are too many, the
    smallest box joins the partner whose union with it grows the least (keeps merged boxes tight).

    Args:
        boxes: xyxy px boxes.
        limit: The most boxes to return (>= 1).

    Returns:
        Disjoint xyxy boxes covering every input box, at most `limit`, largest first.
    """
    a = _merge_overlapping(np.asarray(boxes, np.int64).reshape(-1, 4))
    while len(a) > limit:
        areas = _areas(a)
        i = int(np.argmin(areas))
        union = np.concatenate([np.minimum(a[:, :2], a[i, :2]), np.maximum(a[:, 2:], a[i, 2:])], axis=1)
        growth = (_areas(union) - areas).astype(np.float64)
        growth[i] = np.inf
        j = int(np.argmin(growth))
        a[j] = union[j]
        a = _merge_overlapping(np.delete(a, i, axis=0))
    order = np.argsort(-_areas(a), kind="stable")
    return [(int(b[0]), int(b[1]), int(b[2]), int(b[3])) for b in a[order]]


def _merge_overlapping(a: np.ndarray) -> np.ndarray:
    """Replace every group of transitively overlapping (or touching) boxes by its union; `(N, 4)` -> `(M, 4)`."""
    while len(a) > 1:
        touch = (
            (a[:, None, 0] <= a[None, :, 2]) & (a[None, :, 0] <= a[:, None, 2])
            & (a[:, None, 1] <= a[None, :, 3]) & (a[None, :, 1] <= a[:, None, 3])
        )  # fmt: skip
        if int(touch.sum()) == len(a):  # only each box with itself
            break
        labels = np.arange(len(a))
        while True:  # connected groups: every box takes the smallest label among those it touches
            nxt = np.where(touch, labels[None, :], len(a)).min(axis=1)
            if np.array_equal(nxt, labels):
                break
            labels = nxt
        groups = np.unique(labels)
        out = np.empty((len(groups), 4), a.dtype)
        for k, g in enumerate(groups):
            m = a[labels == g]
            out[k] = (m[:, 0].min(), m[:, 1].min(), m[:, 2].max(), m[:, 3].max())
        a = out
    return a


def _areas(a: np.ndarray) -> np.ndarray:
    return (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])


def _percentiles(grey: np.ndarray) -> tuple[float, float]:
    """The CONTRAST_PERCENTILES grey levels of a uint8 image, from its histogram (a sort would cost more)."""
    hist = cv2.calcHist([grey], [0], None, [256], [0, 256]).ravel()
    cdf = np.cumsum(hist) / max(1.0, float(hist.sum()))
    lo = int(np.searchsorted(cdf, CONTRAST_PERCENTILES[0] / 100.0))
    hi = int(np.searchsorted(cdf, CONTRAST_PERCENTILES[1] / 100.0))
    return float(lo), float(hi)


def _ms_since(t0_ns: int) -> float:
    return (time.perf_counter_ns() - t0_ns) / 1e6
