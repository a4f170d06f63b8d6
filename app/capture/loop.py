"""The capture thread of one camera: source -> pacing -> timestamps -> frame ring.

It never gives up and never raises: a source that fails to open, vanishes or ends (when live) is
reopened with exponential backoff, and every problem is counted where stats can see it. OpenCV
releases the GIL while decoding, so a thread per camera costs the main process little.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import cv2

from app.capture.backoff import Backoff
from app.capture.sources import FrameSource, SourceError, open_source
from app.config import CameraConfig, FaultsConfig
from app.messages import CaptureCounters
from app.ring import FrameRing

log = logging.getLogger(__name__)

DEFAULT_FILE_FPS = 25.0


class CaptureLoop(threading.Thread):
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

    def stop(self) -> None:
        self._stop_event.set()

    def abandon(self) -> None:
        """Give up on this thread (a read that never returns): it will never write to the ring again."""
        with self.write_lock:
            self._abandoned.set()
        self._stop_event.set()

    @property
    def stopping(self) -> bool:
        return self._stop_event.is_set()

    def run(self) -> None:
        try:
            while not self._stop_event.is_set():
                source = self.source_factory(self.camera.source)
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
        self.counters.connected = True
        if self._last_error:
            log.info("camera %s: %s opened", self.camera.name, source.description)
            self._last_error = ""
        fps = self._pacing_fps(source)
        interval = 1.0 / fps if fps else 0.0
        t0 = time.monotonic()
        n = 0
        while not self._stop_event.is_set():
            frame = source.read()
            if frame is None:
                break
            self._read_count += 1
            if self._read_count == self._faults.capture_hang_after_frames:
                time.sleep(self._faults.capture_hang_s)  # fault injection: a read stuck in the driver
            mono_ns, wall = time.monotonic_ns(), time.time()
            image = self._fit(frame.image)
            with self.write_lock:
                if self._abandoned.is_set():
                    return "stopped"
                self.ring.write(image, index=frame.index, pts=frame.pts, captured_mono_ns=mono_ns, captured_wall=wall)
            self.counters.frames += 1
            self.counters.last_frame_mono_ns = mono_ns
            self._backoff.reset()
            self.counters.corrupt += source.corrupt
            source.corrupt = 0
            if interval:
                n += 1
                delay = t0 + n * interval - time.monotonic()
                if delay > 0:
                    self._stop_event.wait(delay)
                elif delay < -interval:  # fell behind (slow decode): resync instead of bursting
                    t0, n = time.monotonic(), 0
        if self._stop_event.is_set():
            return "stopped"
        if source.is_live:
            self.counters.reconnects += 1
            self._note_error(f"{source.description} ended; reconnecting")
            return "reconnect"
        if self.camera.loop:
            return "reopen"
        return "finished"

    def _pacing_fps(self, source: FrameSource) -> float | None:
        if source.is_live or not self.camera.realtime:
            return None
        return self.camera.fps or source.fps or DEFAULT_FILE_FPS

    def _fit(self, image):
        h, w = image.shape[:2]
        mh, mw = self.camera.max_height, self.camera.max_width
        if h <= mh and w <= mw:
            return image
        r = min(mh / h, mw / w)
        size = (max(1, min(mw, int(w * r))), max(1, min(mh, int(h * r))))
        return cv2.resize(image, size, interpolation=cv2.INTER_AREA)

    def _note_error(self, msg: str) -> None:
        self.counters.last_error = msg
        if msg != self._last_error:
            log.warning("camera %s: %s", self.camera.name, msg)
            self._last_error = msg
