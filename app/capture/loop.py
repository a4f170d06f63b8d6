"""The capture thread of one camera: source -> pacing -> timestamps -> motion -> frame ring.

It never gives up and never raises: a source that fails to open, vanishes or ends (when live) is
reopened with exponential backoff, and every problem is counted where stats can see it. OpenCV
releases the GIL while decoding, so a thread per camera costs the main process little.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Literal

import cv2
import numpy as np

from app.capture.backoff import Backoff
from app.capture.ffmpeg import fit_size
from app.capture.sources import FrameSource, SourceError, open_source
from app.config import CameraConfig, FaultsConfig, MotionConfig, redact_url
from app.motion import MotionDetector, MotionResult
from app.ring import FrameRing
from app.types import CaptureCounters

log = logging.getLogger(__name__)

# A pts jump larger than this (a broken timestamp, a cut between recordings) is not waited out.
MAX_PTS_GAP_S = 10.0


class Pacer:
    """When each frame of a file is due, relative to the first: by pts, or at a fixed rate.

    Decode runs ahead and the frame waits here, so its capture timestamp is the moment it is due. A
    source that falls behind by more than a frame (slow decode) is resynchronised instead of bursting to
    catch up, and so is a pts that goes backwards or jumps ahead by more than MAX_PTS_GAP_S.

    Args:
        mode: ``"pts"`` to follow each frame's presentation time, a fixed rate in frames per second, or None
            for no pacing (every ``delay`` is 0).
        clock: Monotonic clock in seconds (injectable for tests).
    """

    def __init__(self, mode: float | Literal["pts"] | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.mode = mode
        self._clock = clock
        self._origin: tuple[float, float] | None = None  # (clock, pts) of the frame paced from
        self._last_pts = 0.0
        self._n = 0  # frames so far, for a fixed rate

    def delay(self, pts: float) -> float:
        """Seconds to wait before the frame with this pts is written (0 when it is due or late)."""
        if self.mode is None:
            return 0.0
        now = self._clock()
        if self.mode == "pts":
            step, self._last_pts = pts - self._last_pts, pts
        else:  # a fixed rate: frame n is due n intervals after the origin, whatever its pts
            step = 1.0 / self.mode
            pts, self._n = self._n * step, self._n + 1
        if self._origin is None or not 0.0 <= step <= MAX_PTS_GAP_S:
            self._origin = (now, pts)
            return 0.0
        due_in = self._origin[0] + (pts - self._origin[1]) - now
        if due_in < -max(step, 0.01):
            self._origin = (now, pts)
            return 0.0
        return max(0.0, due_in)


class CaptureLoop(threading.Thread):
    """The daemon thread that keeps one camera's frames flowing into its ring, each with its motion verdict.

    Args:
        camera: The camera's config (source, size bound, pacing, looping, reconnect backoff, motion).
        ring: The ring it writes; frames larger than the ring's slots are downscaled first.
        counters: Where it counts frames, failures and the last error for stats; a fresh one when None.
        source_factory: Builds the source for ``camera.source`` on every (re)connect.
        write_lock: Shared with a replacement loop of the same camera (see ``abandon``); a new lock when None.
        faults: Fault injection settings (tests only); none injected when None.
    """

    def __init__(
        self,
        camera: CameraConfig,
        ring: FrameRing,
        counters: CaptureCounters | None = None,
        source_factory: Callable[[str | int], FrameSource] = open_source,
        write_lock: threading.Lock | None = None,
        faults: FaultsConfig | None = None,
    ) -> None:
        super().__init__(name=f"capture-{camera.name}", daemon=True)
        self.camera = camera
        self.ring = ring
        self.counters = counters if counters is not None else CaptureCounters()
        self.source_factory = source_factory
        self.finished = False  # a non-looping file reached its end
        # Shared with a replacement loop of the same camera: an abandoned loop stuck in a driver call
        # checks `_abandoned` under this lock before it writes, so the ring never has two writers.
        self.write_lock = write_lock or threading.Lock()
        self._abandoned = threading.Event()
        self._faults = faults or FaultsConfig()
        self._read_count = 0
        self._stop_event = threading.Event()
        r = camera.reconnect
        self._backoff = Backoff(r.initial_s, r.max_s, r.factor)
        self._last_error = ""
        self._motion: MotionDetector | None = None  # built on the first frame; it follows size changes itself
        self._motion_failed = False  # logged once
        self._motion_changed = threading.Event()  # a reloaded `motion` section: rebuild the detector
        self.counters.motion_enabled = camera.motion.enabled

    def set_motion(self, motion: MotionConfig) -> None:
        """A reloaded `cameras[].motion` section: the detector is rebuilt with it at the next frame.

        The capture goes on (no reconnect); the new detector learns its background afresh, as after a start.
        `camera` holds the new section at once, so a replacement loop (the capture watchdog's) starts with it.
        Thread-safe: called on the loop; the capture thread reads `camera` anew for each frame.
        """
        self.camera = self.camera.model_copy(update={"motion": motion})
        self._motion_changed.set()
        self.counters.motion_enabled = motion.enabled

    def stop(self) -> None:
        """Ask the thread to finish; it stops at the next frame or backoff wait (join it to wait)."""
        self._stop_event.set()

    def abandon(self) -> None:
        """Give up on this thread (a read that never returns): it will never write to the ring again."""
        with self.write_lock:
            self._abandoned.set()
        self._stop_event.set()

    @property
    def stopping(self) -> bool:
        """Whether ``stop()`` or ``abandon()`` was called."""
        return self._stop_event.is_set()

    def run(self) -> None:
        """Open, read and reopen sources until stopped or a non-looping file ends (then ``finished`` is set).

        Never raises: every error is counted and logged, then the source is reopened with backoff.
        """
        try:
            while not self._stop_event.is_set():
                source = self.source_factory(self.camera.source)
                source.fit_within = (self.camera.max_width, self.camera.max_height)
                outcome = "reconnect"
                try:
                    outcome = self._run_source(source)
                except Exception as exc:  # never let the thread die: count it and reconnect
                    log.exception("camera %s: unexpected capture error", self.camera.name)
                    self._note_error(f"{type(exc).__name__}: {exc}")
                finally:
                    if not self._abandoned.is_set():  # counters now belong to the replacement loop
                        self.counters.corrupt += source.corrupt
                        if outcome != "reopen":  # a looping file stays connected across its loop point
                            self.counters.connected = False
                    source.corrupt = 0
                    source.close()
                if outcome == "finished":
                    self.finished = True
                    self.counters.ended = True
                    log.info("camera %s: end of file after %d frames (loop: false)", self.camera.name,
                             self.counters.frames)  # fmt: skip
                    return
                if outcome == "reconnect" and not self._stop_event.is_set():
                    self._stop_event.wait(self._backoff.next_delay())
        finally:
            if not self._abandoned.is_set():
                self.counters.connected = False

    # ---- one source lifetime --------------------------------------------------------------------

    def _run_source(self, source: FrameSource) -> str:
        """Returns 'finished', 'reopen' (file loops) or 'reconnect' (failure / live end)."""
        try:
            source.open()
        except SourceError as exc:
            self.counters.connected = False
            self.counters.open_failures += 1
            self._note_error(str(exc))
            return "reconnect"
        if self._last_error and not self.counters.connected:  # back after a failure (not a file's loop point)
            log.info("camera %s: %s opened", self.camera.name, source.description)
            self._last_error = ""
        self.counters.connected = True
        pacer = Pacer(self._pacing(source))
        while not self._stop_event.is_set():
            frame = source.read()
            if frame is None:
                break
            self._read_count += 1
            if self._read_count == self._faults.capture_hang_after_frames:
                time.sleep(self._faults.capture_hang_s)  # fault injection: a read stuck in the driver
            delay = pacer.delay(frame.pts)
            if delay > 0 and self._stop_event.wait(delay):
                break
            mono_ns, wall = time.monotonic_ns(), time.time()
            image = self._fit(frame.image)
            motion = self._detect_motion(image)
            with self.write_lock:
                if self._abandoned.is_set():
                    return "stopped"
                self.ring.write(image, index=frame.index, pts=frame.pts, captured_mono_ns=mono_ns, captured_wall=wall,
                                motion=None if motion is None else motion.motion,
                                motion_boxes=() if motion is None else motion.boxes)  # fmt: skip
            c = self.counters
            c.frames += 1
            c.last_frame_mono_ns = mono_ns
            w, h = source.size or (frame.image.shape[1], frame.image.shape[0])  # as delivered, before scaling
            if (c.width, c.height) != (w, h):
                if c.width:
                    c.resolution_changes += 1
                c.width, c.height = w, h
            self._backoff.reset()
            c.corrupt += source.corrupt
            source.corrupt = 0
        if source.shortfall and not self._stop_event.is_set():
            self._note_error(source.shortfall)
        if self._stop_event.is_set():
            return "stopped"
        if source.is_live:
            self.counters.reconnects += 1
            self._note_error(f"{source.description} ended; reconnecting")
            return "reconnect"
        if self.camera.loop:
            return "reopen"
        return "finished"

    def _pacing(self, source: FrameSource) -> float | Literal["pts"] | None:
        """How a source is paced: not at all (live sources, `realtime: false`), at `camera.fps`, or by pts.

        Pacing by each frame's presentation time makes variable-frame-rate files play as recorded.
        """
        if source.is_live or not self.camera.realtime:
            return None
        return self.camera.fps or "pts"

    def _fit(self, image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        size = fit_size((w, h), (self.camera.max_width, self.camera.max_height))
        if size == (w, h):
            return image
        return cv2.resize(image, size, interpolation=cv2.INTER_AREA)

    def _detect_motion(self, image: np.ndarray) -> MotionResult | None:
        """The motion detector's verdict on a frame as it goes into the ring (None when motion is off), counted."""
        if self._motion_changed.is_set():
            self._motion_changed.clear()
            self._motion, self._motion_failed = None, False
        motion = self.camera.motion  # one reading per frame (set_motion replaces `camera` from the loop)
        if not motion.enabled:
            return None
        try:
            if self._motion is None:
                self._motion = MotionDetector(motion, (image.shape[1], image.shape[0]))
            result = self._motion.detect(image)
        except Exception:  # a motion bug must not stop the camera: the frame goes on as "motion unknown"
            if not self._motion_failed:
                log.exception("camera %s: motion detection failed; frames go on without it", self.camera.name)
                self._motion_failed = True
            self._motion = None  # start afresh on the next frame
            return None
        c = self.counters
        c.motion_checked += 1
        c.motion_frames += result.motion
        c.lighting_changes += result.lighting_change
        c.motion_ms_total += result.ms
        return result

    def _note_error(self, msg: str) -> None:
        msg = redact_url(msg)  # library errors may repeat the source URL, credentials and all
        self.counters.last_error = msg
        if msg != self._last_error:
            log.warning("camera %s: %s", self.camera.name, msg)
            self._last_error = msg
