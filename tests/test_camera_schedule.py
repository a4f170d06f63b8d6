"""The worker's camera schedule (pure, explicit clock): fps caps, motion gating, idle checks, tracker hints,
stationary re-checks, weighted fair sharing and batching; then one real worker on three cameras of real video."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from app.config import DetectConfig
from app.inference.camera_schedule import CameraScheduler
from app.inference.protocol import TrackHint
from app.types import FrameMeta

STILL = FrameMeta(seq=1, index=0, pts=0.0, captured_mono_ns=0, captured_wall=0.0, height=480, width=640, motion=False)
MOVING = FrameMeta(
    seq=1, index=0, pts=0.0, captured_mono_ns=0, captured_wall=0.0, height=480, width=640, motion=True,
    motion_boxes=((10, 20, 110, 220),),
)  # fmt: skip
OFF = FrameMeta(seq=1, index=0, pts=0.0, captured_mono_ns=0, captured_wall=0.0, height=480, width=640)


def det(fps: float | None = 5.0, idle: float = 10.0) -> DetectConfig:
    return DetectConfig(fps=fps, idle_interval_s=idle)


def run_single(sched: CameraScheduler, cam: str, meta: FrameMeta, seconds: float, frame_s: float = 0.04) -> list[float]:
    """A camera delivering `meta` every `frame_s` with an instant detector: the times it was detected."""
    out = []
    for i in range(round(seconds / frame_s)):
        now = 100.0 + i * frame_s
        if sched.decide(cam, meta, now).verdict == "due" and sched.choose([cam], 1) == [cam]:
            sched.detected(cam, now)
            out.append(now)
    return out


def test_fps_cap_gives_at_most_fps_detections_per_second():
    sched = CameraScheduler({"a": det(fps=5.0)})
    times = run_single(sched, "a", MOVING, 20.0)
    # 25 fps of moving frames, capped at 5/s: 100 in 20 s (the grid keeps the rate although frames arrive off it).
    assert 98 <= len(times) <= 101
    for k in range(len(times) - 5):  # never more than fps in any second (one grid step of catch-up at most)
        assert times[k + 5] - times[k] >= 1.0 - 1e-9 - 0.2


def test_no_fps_cap_detects_every_frame():
    sched = CameraScheduler({"a": det(fps=None)})
    assert len(run_single(sched, "a", MOVING, 4.0)) == 100


def test_motion_off_is_always_a_candidate_and_looks_at_the_whole_frame():
    sched = CameraScheduler({"a": det(fps=None)})
    d = sched.decide("a", OFF, 0.0)
    assert (d.verdict, d.whole_frame, "always" in d.reasons) == ("due", True, True)
    assert len(run_single(sched, "a", OFF, 2.0)) == 50


def test_static_scene_is_detected_once_per_idle_interval():
    sched = CameraScheduler({"a": det(fps=5.0, idle=10.0)})
    times = run_single(sched, "a", STILL, 30.0)
    assert len(times) == 3  # the first frame, then every 10 s (30 / idle_interval_s, the figure's bound + 1)
    assert [round(t - times[0], 2) for t in times] == [0.0, 10.0, 20.0]
    d = sched.decide("a", STILL, times[-1] + 1.0)
    assert (d.verdict, d.reasons) == ("skip", ())
    idle = sched.decide("a", STILL, times[-1] + 10.0)
    assert (idle.verdict, idle.reasons, idle.whole_frame) == ("due", ("idle",), True)


def test_motion_makes_a_camera_due_with_its_motion_boxes():
    sched = CameraScheduler({"a": det()})
    sched.detected("a", 0.0)
    assert sched.decide("a", STILL, 1.0).verdict == "skip"
    d = sched.decide("a", MOVING, 1.0)
    assert (d.verdict, d.reasons, d.motion_boxes, d.whole_frame) == ("due", ("motion",), ((10, 20, 110, 220),), False)
    # Within the fps interval motion waits (the frame stays unseen) instead of being skipped.
    assert sched.decide("a", MOVING, 1.1).verdict == "due"
    sched.detected("a", 1.1)
    assert sched.decide("a", MOVING, 1.2).verdict == "wait"
    assert sched.decide("a", STILL, 1.2).verdict == "skip"


def test_an_active_hint_keeps_detecting_at_fps_on_the_tracked_boxes():
    sched = CameraScheduler({"a": det(fps=5.0)})
    sched.detected("a", 99.0)
    sched.set_hint(TrackHint("a", True, ((1.0, 2.0, 30.0, 40.0),)))
    d = sched.decide("a", STILL, 100.0)
    assert (d.verdict, d.reasons, d.track_boxes, d.whole_frame) == ("due", ("active",), ((1, 2, 30, 40),), False)
    assert 9 <= len(run_single(sched, "a", STILL, 2.0)) <= 11
    sched.set_hint(TrackHint("a", False))  # the object left or stopped: back to idle checks
    assert run_single(sched, "a", STILL, 5.0) == []


def test_stationary_objects_are_rechecked_once_when_due():
    sched = CameraScheduler({"a": det(fps=5.0)})
    sched.detected("a", 0.0)
    sched.set_hint(TrackHint("a", False, recheck_mono=5.0, recheck_boxes=((50.0, 60.0, 70.0, 80.0),)))
    assert sched.decide("a", STILL, 4.9).verdict == "skip"
    d = sched.decide("a", STILL, 5.0)
    assert (d.verdict, d.reasons, d.track_boxes, d.whole_frame) == ("due", ("recheck",), ((50, 60, 70, 80),), False)
    sched.detected("a", 5.0)
    assert sched.decide("a", STILL, 6.0).verdict == "skip"  # served: not again until the tracker asks again
    sched.set_hint(TrackHint("a", False, recheck_mono=15.0, recheck_boxes=((50.0, 60.0, 70.0, 80.0),)))
    assert sched.decide("a", STILL, 14.0).verdict == "skip"  # (the idle check is due at 15.0 too)
    assert sched.decide("a", STILL, 15.0).verdict == "due"
    # Motion elsewhere while the re-check is due: both are looked at.
    d = sched.decide("a", MOVING, 15.0)
    assert d.reasons[:2] == ("motion", "recheck") and d.track_boxes == ((50, 60, 70, 80),)


class Clock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def saturate(sched: CameraScheduler, cams: list[str], rounds: int, batch: int = 1, dt: float = 0.5) -> Counter:
    """Every camera always has a moving frame and the detector is the bottleneck: picks per camera.

    Time goes on from the scheduler's clock (a `Clock`), `dt` per round.
    """
    clock = sched.clock
    assert isinstance(clock, Clock)
    got: Counter = Counter()
    for _ in range(rounds):
        due = [c for c in cams if sched.decide(c, MOVING).verdict == "due"]
        picked = sched.choose(due, batch)
        assert len(picked) == min(batch, len(due)) and len(set(picked)) == len(picked)
        for c in picked:
            sched.detected(c)  # as the worker does: at the pick (the fps cap counts from there)
            got[c] += 1
        clock.t += dt
    return got


def test_shares_follow_the_fps_weights_under_load():
    cams = {"a": det(fps=8.0), "b": det(fps=4.0), "c": det(fps=2.0), "d": det(fps=2.0)}
    sched = CameraScheduler(cams, Clock())
    got = saturate(sched, list(cams), 1600)  # 0.5 s per detection: far below what any camera asks for
    assert got["a"] == pytest.approx(800, abs=2)
    assert got["b"] == pytest.approx(400, abs=2)
    assert got["c"] == pytest.approx(200, abs=2) and got["d"] == pytest.approx(200, abs=2)


def test_equal_weights_share_equally_and_none_starves_in_any_window():
    sched = CameraScheduler({c: det(fps=None) for c in "abc"})
    now, order = 0.0, []
    for _ in range(300):
        (c,) = sched.choose("abc", 1)
        now += 0.1
        sched.detected(c, now)
        order.append(c)
    for k in range(0, 297):
        assert set(order[k : k + 3]) == {"a", "b", "c"}  # strict rotation: each every third turn


def test_a_camera_joining_late_cannot_claim_back_credit():
    sched = CameraScheduler({"a": det(fps=None), "b": det(fps=None)}, Clock())
    saturate(sched, ["a", "b"], 200)  # a and b have had 100 turns each
    sched.add("c", det(fps=None))
    got = saturate(sched, ["a", "b", "c"], 300)
    assert got == {"a": 100, "b": 100, "c": 100}
    # A camera that paused (no frames due) rejoins at the current virtual time too.
    saturate(sched, ["a", "b"], 200)
    got = saturate(sched, ["a", "b", "c"], 30)
    assert got == {"a": 10, "b": 10, "c": 10}


def test_unloaded_cameras_get_their_own_fps_whatever_the_weights():
    cams = {"a": det(fps=5.0), "b": det(fps=1.0)}
    sched = CameraScheduler(cams, Clock())
    got = saturate(sched, list(cams), 2000, batch=1, dt=0.01)  # 20 s, detector mostly idle
    assert got["a"] == pytest.approx(100, abs=2) and got["b"] == pytest.approx(20, abs=2)


def test_rounds_batch_up_to_max_batch_distinct_cameras_fairly():
    sched = CameraScheduler({c: det(fps=None) for c in "abcdef"}, Clock())
    got = saturate(sched, list("abcdef"), 30, batch=4)
    assert sum(got.values()) == 120 and set(got.values()) == {20}
    assert sched.choose(["a", "b"], 4) == ["a", "b"] or sched.choose(["a", "b"], 4) == ["b", "a"]


def test_detect_changes_apply_and_unknown_cameras_are_ignored():
    sched = CameraScheduler({"a": det(fps=1.0)})
    sched.detected("a", 0.0)
    assert sched.decide("a", MOVING, 0.5).verdict == "wait"
    sched.set_detect("a", det(fps=4.0))
    assert sched.decide("a", MOVING, 0.5).verdict == "due"
    sched.set_hint(TrackHint("gone", True))  # a hint for a camera detached meanwhile
    sched.remove("a")
    assert sched.cameras == () and sched.choose(["a"], 2) == []


def test_real_worker_shares_three_cameras_by_their_detect_fps(tiny_model: Path, small_video: Path) -> None:
    from conftest import Collect, run_driven, wait_until

    from app.config import VigilConfig
    from app.pipeline.live import LivePipeline

    fps = {"fast": 6.0, "mid": 3.0, "slow": 1.5}
    cams = [
        {"name": n, "source": str(small_video), "loop": True, "realtime": True, "detect": {"fps": f},
         "motion": {"enabled": False}}  # every frame a candidate: the fps caps and the shares decide
        for n, f in fps.items()
    ]  # fmt: skip
    cfg = VigilConfig.model_validate(
        {
            "cameras": cams,
            "model": {"path": str(tiny_model), "threads": 1},
            "output": {"json_lines": False, "status_interval_s": 0},
        }
    )
    sink = Collect()
    pipe = LivePipeline(cfg, [sink], duration_s=120)

    def count(cam: str) -> int:
        return sum(1 for r in list(sink.records) if r["camera"] == cam)

    def drive() -> None:
        assert wait_until(lambda: count("slow") >= 2, 90), "no results"
        start = {c: count(c) for c in fps}  # from here all three run (start-up out of the window)
        assert wait_until(lambda: count("slow") - start["slow"] >= 8, 90)
        got = {c: count(c) - start[c] for c in fps}
        # 4 : 2 : 1 by the weights, with generous room for a loaded machine.
        assert 2.5 <= got["fast"] / got["slow"] <= 6.0, got
        assert 1.3 <= got["mid"] / got["slow"] <= 3.0, got
        assert 1.3 <= got["fast"] / got["mid"] <= 3.0, got

    run_driven(pipe, drive)
    records = list(sink.records)
    assert {tuple(map(tuple, r["regions"])) for r in records} == {((0, 0, 160, 120),)}  # the whole frame
    assert all(r["motion"] is None for r in records)  # motion detection off


def test_real_worker_skips_still_frames_and_follows_hints(tiny_model: Path) -> None:
    """A real worker on a ring the test writes, with the motion verdicts a motion detector would give."""
    import time

    import numpy as np

    from app.config import ModelConfig
    from app.inference.protocol import SetCameraDetect
    from app.inference.worker import WorkerHandle, WorkerSpec
    from app.ring import FrameRing
    from app.types import FrameResult

    ring = FrameRing.create(4, 120, 160)
    spec = WorkerSpec(
        worker_id=1,
        model=ModelConfig(path=str(tiny_model), threads=1, warmup_runs=0),
        rings=(("cam", ring.spec),),
        detect=(("cam", DetectConfig(fps=None, idle_interval_s=1000)),),
    )
    handle = WorkerHandle(spec)
    image = np.full((120, 160, 3), 90, np.uint8)
    seq = 0

    def write(motion: bool, boxes: tuple = ()) -> int:
        nonlocal seq
        seq += 1
        ring.write(image, index=seq, pts=seq / 25, captured_mono_ns=time.monotonic_ns(), captured_wall=time.time(),
                   motion=motion, motion_boxes=boxes)  # fmt: skip
        return seq

    def result(timeout: float = 60.0) -> FrameResult:
        assert handle.conn.poll(timeout), "no result"
        msg = handle.conn.recv()
        assert isinstance(msg, FrameResult), msg
        return msg

    def settle() -> None:
        # Give the worker (polling every few ms) time to look at what was written or sent; what it must not do
        # is asserted below by results that never come, whatever the timing.
        time.sleep(0.5)

    try:
        handle.start()
        handle.wait_ready(120)
        write(False)  # never detected before: the idle check is due at once
        first = result()
        assert first.frame.seq == 1 and first.regions == ((0, 0, 160, 120),)
        assert first.frame.motion is False and first.skipped == 0
        for _ in range(10):  # a still scene: passed over
            write(False)
        settle()
        assert not handle.conn.poll(0), "a still frame was detected"
        moving = write(True, ((10, 10, 50, 60),))
        r = result()
        assert (r.frame.seq, r.skipped, r.frame.motion_boxes) == (moving, 10, ((10, 10, 50, 60),))
        # A moving tracked object keeps the camera detecting without motion.
        handle.send(TrackHint("cam", True, ((20.0, 20.0, 60.0, 80.0),)))
        settle()
        n = write(False)
        assert result().frame.seq == n
        # Back to idle, with stationary objects due for a look now: one detection, then still frames are skipped.
        handle.send(TrackHint("cam", False, recheck_mono=time.monotonic(), recheck_boxes=((5.0, 5.0, 40.0, 40.0),)))
        settle()
        n = write(False)
        assert result().frame.seq == n
        write(False)
        settle()
        assert not handle.conn.poll(0), "the re-check was served already"
        # A new fps cap applies from the last detection on: a moving frame waits, unseen, instead of being
        # skipped, and is taken as soon as the cap allows (here: lifted again).
        handle.send(SetCameraDetect("cam", DetectConfig(fps=0.001, idle_interval_s=1000)))
        settle()
        n = write(True, ((0, 0, 10, 10),))
        settle()
        assert not handle.conn.poll(0), "detected within its fps interval"
        handle.send(SetCameraDetect("cam", DetectConfig(fps=None, idle_interval_s=1000)))
        r = result()
        assert (r.frame.seq, r.skipped) == (n, 1)  # the still frame before it was skipped
    finally:
        handle.stop()
        ring.close()
        ring.unlink()


def test_stats_count_skipped_frames_apart_from_drops() -> None:
    from app.pipeline.stats import CameraStats
    from app.types import CaptureCounters, Detections, FrameResult, StageTimings

    stats = CameraStats("cam", CaptureCounters())

    def res(seq: int, skipped: int) -> FrameResult:
        meta = FrameMeta(seq, seq, 0.0, 0, 0.0, 120, 160)
        return FrameResult("cam", meta, Detections.empty(), StageTimings(1, 1, 1), 0, 0, 1, skipped=skipped)

    assert stats.record(res(1, 0), 0)[0] == 0
    assert stats.record(res(12, 8), 0)[0] == 2  # 10 frames in between: 8 passed over, 2 overwritten unseen
    assert stats.record(res(20, 50), 0)[0] == 0  # (never more skipped than the gap)
    doc = stats.as_dict()
    assert (doc["frames_dropped"], doc["frames_skipped"], doc["frames_processed"]) == (2, 15, 3)
