"""Rolling latency percentiles and rates; the numbers behind the status line, stats messages and bench."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from app.envelope import envelope
from app.supervisor.sd_notify import SystemdNotifier
from app.types import CaptureCounters, FrameResult

log = logging.getLogger(__name__)


class Rolling:
    """The last `size` samples of one measurement (ms), with percentiles."""

    def __init__(self, size: int = 1000) -> None:
        self._values: deque[float] = deque(maxlen=size)

    def add(self, v: float) -> None:
        """Record one sample, ms; the oldest drops out past `size`."""
        self._values.append(v)

    def __len__(self) -> int:
        return len(self._values)

    def percentile(self, q: float) -> float | None:
        """The `q`-th percentile (0..100) of the kept samples, ms; None with no samples."""
        if not self._values:
            return None
        return float(np.percentile(np.fromiter(self._values, float, len(self._values)), q))

    def summary(self) -> dict[str, float | None]:
        """p50, p95 and p99 of the kept samples (ms, 2 decimals); None each with no samples."""
        if not self._values:
            return {"p50": None, "p95": None, "p99": None}
        a = np.fromiter(self._values, float, len(self._values))
        p50, p95, p99 = np.percentile(a, [50, 95, 99])
        return {"p50": round(float(p50), 2), "p95": round(float(p95), 2), "p99": round(float(p99), 2)}


class RateMeter:
    """Events per second over a sliding window, from monotonic timestamps."""

    def __init__(self, window_s: float = 5.0) -> None:
        self.window_s = window_s
        self._events: deque[tuple[float, int]] = deque()

    def add(self, n: int = 1, now: float | None = None) -> None:
        """Count `n` events at `now` (monotonic s; `time.monotonic()` when None)."""
        now = time.monotonic() if now is None else now
        self._events.append((now, n))
        self._trim(now)

    def rate(self, now: float | None = None) -> float:
        """Events per second over the last `window_s` s before `now` (monotonic s; now when None)."""
        now = time.monotonic() if now is None else now
        self._trim(now)
        if not self._events:
            return 0.0
        return sum(n for _, n in self._events) / self.window_s

    def _trim(self, now: float) -> None:
        while self._events and now - self._events[0][0] > self.window_s:
            self._events.popleft()


@dataclass
class CameraStats:
    """Running figures of one camera: capture counters, results, drops, errors and rolling stage timings (ms).

    `as_dict` is the camera's entry in the stats document; `status_line` its line in the log and systemd STATUS=.
    """

    name: str
    capture: CaptureCounters
    processed: int = 0
    dropped: int = 0
    skipped: int = 0  # passed over by the worker: no motion and no other reason to look (README "Scheduling")
    errors: int = 0
    last_result_mono: float = 0.0
    last_seq: int = 0
    preprocess_ms: Rolling = field(default_factory=Rolling)
    inference_ms: Rolling = field(default_factory=Rolling)
    postprocess_ms: Rolling = field(default_factory=Rolling)
    frame_age_ms: Rolling = field(default_factory=Rolling)
    processed_rate: RateMeter = field(default_factory=RateMeter)
    dropped_rate: RateMeter = field(default_factory=RateMeter)
    _captured_seen: int | None = None
    captured_rate: RateMeter = field(default_factory=RateMeter)

    def record(self, r: FrameResult, received_mono_ns: int) -> tuple[int, float]:
        """Returns (frames dropped since the previous result, frame age at result in ms).

        Drops are counted here from capture sequence numbers, not by the worker, so frames captured while
        a worker was starting or being replaced are counted too; the frames the worker says it skipped (no
        motion, nothing due) are not drops.
        """
        skipped = min(r.skipped, max(0, r.frame.seq - self.last_seq - 1))
        dropped = max(0, r.frame.seq - self.last_seq - 1 - skipped)
        self.processed += 1
        self.dropped += dropped
        self.skipped += skipped
        self.last_seq = r.frame.seq
        now = time.monotonic()
        self.last_result_mono = now
        self.processed_rate.add(1, now)
        if dropped:
            self.dropped_rate.add(dropped, now)
        self.preprocess_ms.add(r.timings.preprocess_ms)
        self.inference_ms.add(r.timings.inference_ms)
        self.postprocess_ms.add(r.timings.postprocess_ms)
        age = (received_mono_ns - r.frame.captured_mono_ns) / 1e6
        self.frame_age_ms.add(age)
        return dropped, age

    def tick(self) -> None:
        """Sample the capture counter (single writer elsewhere; we only read it)."""
        frames = self.capture.frames
        if self._captured_seen is None:
            self._captured_seen = frames  # baseline: frames before the first tick are not a rate
        elif frames > self._captured_seen:
            self.captured_rate.add(frames - self._captured_seen)
        self._captured_seen = frames

    def as_dict(self) -> dict:
        """Counters, rates (per second over 5 s) and latency percentiles (ms) as the stats document shows them."""
        c = self.capture
        return {
            "camera": self.name,
            "capture_fps": round(self.captured_rate.rate(), 2),
            "processed_fps": round(self.processed_rate.rate(), 2),
            "dropped_fps": round(self.dropped_rate.rate(), 2),
            "frames_captured": c.frames,
            "frames_processed": self.processed,
            "frames_dropped": self.dropped,
            "frames_skipped": self.skipped,
            "frames_corrupt": c.corrupt,
            "inference_errors": self.errors,
            "reconnects": c.reconnects,
            "open_failures": c.open_failures,
            "connected": c.connected,
            "ended": c.ended,
            "width": c.width or None,
            "height": c.height or None,
            "resolution_changes": c.resolution_changes,
            "motion": {
                "enabled": c.motion_enabled,
                "motion_frames": c.motion_frames,
                "active_fraction": round(c.motion_frames / c.motion_checked, 3) if c.motion_checked else None,
                "lighting_changes": c.lighting_changes,
                "ms_avg": round(c.motion_ms_total / c.motion_checked, 3) if c.motion_checked else None,
            },
            "last_error": c.last_error or None,
            "preprocess_ms": self.preprocess_ms.summary(),
            "inference_ms": self.inference_ms.summary(),
            "postprocess_ms": self.postprocess_ms.summary(),
            "frame_age_ms": self.frame_age_ms.summary(),
        }

    def status_line(self) -> str:
        """One short human-readable line: fps, inference and frame-age percentiles (ms), drops and errors."""
        s = self.as_dict()
        inf, age = s["inference_ms"], s["frame_age_ms"]

        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v:.0f}"

        return (
            f"{self.name}: in {s['capture_fps']:.1f} fps | out {s['processed_fps']:.1f} fps | "
            f"dropped {s['dropped_fps']:.1f} fps ({s['frames_dropped']} total) | "
            f"infer p50 {ms(inf['p50'])} ms p99 {ms(inf['p99'])} ms | age p99 {ms(age['p99'])} ms"
            + (f" | corrupt {s['frames_corrupt']}" if s["frames_corrupt"] else "")
            + ("" if s["connected"] else " | source ended" if s["ended"] else " | source DISCONNECTED")
        )


def stats_document(
    device_id: str,
    uptime_s: float,
    worker: dict,
    main_rss_mb: float | None,
    cameras: Iterable[CameraStats],
    sections: dict[str, dict],
) -> dict:
    """The stats message (schema 1) of MQTT `<base>/stats` and HTTP `/api/stats`.

    Pipeline figures, the worker's, per camera, plus each service's own section (`mqtt`, `webrtc`).
    """
    per_camera = {c.name: {k: v for k, v in c.as_dict().items() if k != "camera"} for c in cameras}
    return envelope(device_id, None, uptime_s=uptime_s, cameras=per_camera, worker=worker, main_rss_mb=main_rss_mb,
                    **sections)  # fmt: skip


async def status_lines(
    interval_s: float, stats: Mapping[str, CameraStats], suffix: Callable[[], str], notifier: SystemdNotifier
) -> None:
    """Every `interval_s` s, log and send to systemd's STATUS= one status line per camera.

    One status line per camera (plus `suffix()`, what serves) to the log and to systemd's STATUS=. Returns at once when
    `interval_s` <= 0; runs until cancelled.
    """
    if interval_s <= 0:
        return
    while True:
        await asyncio.sleep(interval_s)
        lines = [s.status_line() + suffix() for s in stats.values()]
        for line in lines:
            log.info("%s", line)
        notifier.status(" || ".join(lines))
