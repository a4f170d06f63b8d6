"""Which cameras' frames the detector looks at, when, and in what order (pure logic, clock passed in).

Per camera (`cameras[].detect`, the tracker's latest `TrackHint` and the newest frame's motion verdict):

    DUE   an unseen frame, the `detect.fps` interval has passed, and a reason to look: motion in the newest frame,
          a moving tracked object (`hint.active`), stationary objects due for a re-check, `idle_interval_s` since
          the last detection, or motion detection off (`motion` None: every frame is a candidate)
    WAIT  a reason to look, but the fps interval has not passed: the frame stays unseen (a newer one replaces it;
          the frames replaced count as `dropped`)
    SKIP  no reason to look: the frame is passed over (counted as `skipped`) and costs nothing

The fps cap runs on a grid (`next_at += 1/fps`), so a detection that comes a little late (the frame arrived after
the grid point, the detector was busy) does not lower the camera's rate: at most `fps` detections per second on
average; after a pause the grid restarts from the detection that ends it.

Among due cameras the detector is shared by stride scheduling: every camera has a virtual time that grows by
1/weight per detection (weight = `detect.fps`, 1 when null) and the smallest goes first, so under load the
detection rates follow the weights and no camera starves. A camera that becomes due after a pause joins at the
current virtual time: it cannot claim back the turns it did not want. Up to `model.max_batch` cameras are picked
per round (each at most once), run as one batch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from app.config import DetectConfig
from app.inference.protocol import TrackHint
from app.types import Box, FrameMeta

Verdict = Literal["due", "wait", "skip"]
Reason = Literal["motion", "active", "recheck", "idle", "always"]


@dataclass(frozen=True, slots=True)
class CameraDecision:
    """What the scheduler makes of one camera's newest unseen frame.

    Attributes:
        camera: The camera's name.
        verdict: `due` (may be picked now), `wait` (wanted, but its fps interval has not passed) or `skip` (no
            reason to look at it).
        reasons: Why it is wanted (empty for `skip`).
        motion_boxes: Where motion was seen in the frame (only when it has motion), xyxy pixels.
        track_boxes: Tracked objects to look at: the moving ones' boxes while the hint is active, plus the
            stationary ones' when their re-check is due, xyxy pixels.
        whole_frame: Look at the whole frame (idle check, motion detection off, or nothing more precise known).
    """

    camera: str
    verdict: Verdict
    reasons: tuple[Reason, ...] = ()
    motion_boxes: tuple[Box, ...] = ()
    track_boxes: tuple[Box, ...] = ()
    whole_frame: bool = False


@dataclass
class _Camera:
    """One camera's scheduling state (mutable, owned by the scheduler)."""

    detect: DetectConfig
    order: int  # tie-break between equal virtual times: the one picked longest ago first
    hint: TrackHint | None = None
    last_detect: float | None = None  # monotonic s of its last detection; None: never
    next_at: float = -math.inf  # the fps grid: not before this
    vtime: float = 0.0
    waiting: bool = False  # due at the previous choice (else it joins at the current virtual time)
    recheck_done: float = 0.0  # the hint's recheck_mono already served by a detection
    detections: int = 0

    @property
    def weight(self) -> float:
        return self.detect.fps if self.detect.fps is not None else 1.0


def _boxes(boxes: Iterable[Sequence[float]]) -> tuple[Box, ...]:
    return tuple((int(b[0]), int(b[1]), int(b[2]), int(b[3])) for b in boxes)


class CameraScheduler:
    """The detector's schedule over the cameras of one worker.

    Args:
        detect: Each camera's `cameras[].detect` (cameras added later get theirs with `add` / `set_detect`).
        clock: Monotonic seconds (`time.monotonic`); tests pass their own.
    """

    def __init__(
        self, detect: Mapping[str, DetectConfig] | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.clock = clock
        self._cams: dict[str, _Camera] = {}
        self._vnow = 0.0  # the virtual time of the latest pick
        self._picks = 0
        for camera, cfg in (detect or {}).items():
            self.add(camera, cfg)

    # ---- cameras and what the parent tells -------------------------------------------------------

    @property
    def cameras(self) -> tuple[str, ...]:
        """The cameras scheduled, in the order added."""
        return tuple(self._cams)

    def add(self, camera: str, detect: DetectConfig | None = None) -> None:
        """Schedule a camera (a ring attached); one already known keeps its state and takes `detect` if given.

        A new camera's first frame is due at once, and it joins at the current virtual time.
        """
        cam = self._cams.get(camera)
        if cam is None:
            self._cams[camera] = _Camera(detect or DetectConfig(), order=-1, vtime=self._vnow)
        elif detect is not None:
            cam.detect = detect

    def remove(self, camera: str) -> None:
        """Stop scheduling a camera (its ring detached); unknown names are ignored."""
        self._cams.pop(camera, None)

    def set_detect(self, camera: str, detect: DetectConfig) -> None:
        """A camera's `detect` section changed (config reload); its fps grid restarts from its last detection."""
        cam = self._cams.get(camera)
        if cam is None:
            self.add(camera, detect)
            return
        cam.detect = detect
        cam.next_at = -math.inf if cam.last_detect is None else cam.last_detect + self._interval(cam)

    def set_hint(self, hint: TrackHint) -> None:
        """The tracker's latest wish for a camera (unknown cameras are ignored: the ring may be gone already)."""
        cam = self._cams.get(hint.camera)
        if cam is not None:
            cam.hint = hint

    def detect_config(self, camera: str) -> DetectConfig:
        """A camera's `detect` section (the default for an unknown camera)."""
        cam = self._cams.get(camera)
        return cam.detect if cam is not None else DetectConfig()

    def detections(self, camera: str) -> int:
        """Detections recorded for a camera since it was added (0 for an unknown one)."""
        cam = self._cams.get(camera)
        return cam.detections if cam is not None else 0

    # ---- decisions ---------------------------------------------------------------------------------

    def decide(self, camera: str, meta: FrameMeta, now: float | None = None) -> CameraDecision:
        """Judge a camera's newest unseen frame.

        Args:
            camera: A scheduled camera (an unknown one is added with the default `detect`).
            meta: The frame's metadata (its `motion` and `motion_boxes`).
            now: Monotonic seconds; the clock's when None.

        Returns:
            Due, wait or skip, with the reasons and where to look.
        """
        now = self.clock() if now is None else now
        if camera not in self._cams:
            self.add(camera)
        cam = self._cams[camera]
        hint = cam.hint
        reasons: list[Reason] = []
        motion_boxes: tuple[Box, ...] = ()
        if meta.motion is None:
            reasons.append("always")
        elif meta.motion:
            reasons.append("motion")
            motion_boxes = _boxes(meta.motion_boxes)
        track: list[Box] = []
        if hint is not None and hint.active:
            reasons.append("active")
            track += _boxes(hint.boxes)
        if hint is not None and 0 < hint.recheck_mono <= now and hint.recheck_mono != cam.recheck_done:
            reasons.append("recheck")
            track += _boxes(hint.recheck_boxes)
        if cam.last_detect is None or now - cam.last_detect >= cam.detect.idle_interval_s:
            reasons.append("idle")
        if not reasons:
            return CameraDecision(camera, "skip")
        # New objects may be anywhere on an idle look or with motion detection off; a re-check alone looks at
        # the stationary objects only.
        whole = bool({"always", "idle"} & set(reasons)) or not (motion_boxes or track)
        verdict: Verdict = "due" if now >= cam.next_at else "wait"
        return CameraDecision(camera, verdict, tuple(reasons), motion_boxes, tuple(track), whole)

    def choose(self, due: Iterable[str], limit: int) -> list[str]:
        """Pick up to `limit` of the due cameras, smallest virtual time first (each at most once).

        Call with every camera due now (also when the detector then serves something else): a camera that was
        not due at the previous call joins at the current virtual time.

        Args:
            due: Cameras whose decision is `due`.
            limit: The most to pick (`model.max_batch`), >= 1.

        Returns:
            Camera names in pick order; record each detection with `detected`.
        """
        names = [c for c in dict.fromkeys(due) if c in self._cams]
        now_due = set(names)
        for name, cam in self._cams.items():
            if name in now_due and not cam.waiting:
                cam.vtime = max(cam.vtime, self._vnow)
            cam.waiting = name in now_due
        names.sort(key=lambda c: (self._cams[c].vtime, self._cams[c].order))
        picked = names[: max(1, limit)]
        if picked:
            self._vnow = max(self._vnow, self._cams[picked[0]].vtime)
        return picked

    def detected(self, camera: str, now: float | None = None) -> None:
        """Record a detection of `camera` picked at `now` (monotonic s): its fps grid, idle timer, virtual time.

        Pass the time of the pick, not of the result: a detection longer than the fps interval must not lower
        the rate further.
        """
        cam = self._cams.get(camera)
        if cam is None:
            return
        now = self.clock() if now is None else now
        interval = self._interval(cam)
        # On the grid while less than one interval late, so a late frame does not lower the rate; after a pause
        # the grid restarts here (no burst to make up for the turns not wanted).
        cam.next_at = (cam.next_at if now - cam.next_at < interval else now) + interval
        cam.last_detect = now
        cam.vtime += 1.0 / cam.weight
        cam.detections += 1
        self._picks += 1
        cam.order = self._picks
        if cam.hint is not None and 0 < cam.hint.recheck_mono <= now:
            cam.recheck_done = cam.hint.recheck_mono

    @staticmethod
    def _interval(cam: _Camera) -> float:
        return 0.0 if cam.detect.fps is None else 1.0 / cam.detect.fps
