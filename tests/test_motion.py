"""Motion detection: real clips (tests/support/motion_clips.py) through the real detector, and through a real
capture loop into a real frame ring, read back as a worker reads it."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
from conftest import wait_until
from support.motion_clips import (
    Clip,
    lighting_step_clip,
    moving_clip,
    read_frames,
    static_clip,
)

from app.capture.loop import CaptureLoop
from app.config import CameraConfig, FaultsConfig, MotionConfig
from app.motion import MotionDetector, MotionResult
from app.motion.detector import CALIBRATION_FRAMES, merge_boxes
from app.pipeline.stats import CameraStats, stats_document
from app.reload.plan import camera_changes
from app.ring import MAX_MOTION_BOXES, FrameRing
from app.supervisor.capture_watchdog import CaptureWatchdog
from app.web.metrics import Metrics

RIGHT_HALF = [[0.5, 0.0], [1.0, 0.0], [1.0, 1.0], [0.5, 1.0]]
TOLERANCE = 6  # px: blur and the small copy's pixels blur a mover's edges this much at 320x240 and 640x360


def run(clip: Clip, cfg: MotionConfig | None = None) -> list[MotionResult]:
    """Every frame of the clip through one detector, as a capture loop feeds it."""
    det: MotionDetector | None = None
    out = []
    for frame in read_frames(clip.path):
        det = det or MotionDetector(cfg or MotionConfig(), (frame.shape[1], frame.shape[0]))
        out.append(det.detect(frame))
    assert len(out) == clip.frames
    return out


def covers(box: tuple[int, ...], target: tuple[int, ...], tol: int = TOLERANCE) -> bool:
    return (
        box[0] <= target[0] + tol
        and box[1] <= target[1] + tol
        and box[2] >= target[2] - tol
        and (box[3] >= target[3] - tol)
    )


def union(boxes: Iterable[tuple[int, ...]]) -> tuple[int, ...]:
    a = np.asarray(list(boxes)).reshape(-1, 4)
    return (0, 0, 0, 0) if not len(a) else (*a[:, :2].min(axis=0).tolist(), *a[:, 2:].max(axis=0).tolist())


def overlaps(a: tuple[int, ...], b: tuple[int, ...], margin: int = 0) -> bool:
    return a[0] < b[2] + margin and b[0] < a[2] + margin and a[1] < b[3] + margin and b[1] < a[3] + margin


# ---- the detector on real clips ------------------------------------------------------------------------


@pytest.mark.parametrize("jpeg_quality", [None, 50], ids=["sensor-noise", "sensor-noise+jpeg"])
def test_a_still_scene_has_no_motion(tmp_path: Path, jpeg_quality: int | None) -> None:
    clip = static_clip(tmp_path / "still.mp4", seconds=3.0, noise_sigma=3.0, jpeg_quality=jpeg_quality)
    results = run(clip)
    assert [r.calibrating for r in results[:CALIBRATION_FRAMES]] == [True] * CALIBRATION_FRAMES
    assert [i for i, r in enumerate(results) if r.motion or r.boxes] == []
    assert not any(r.lighting_change for r in results)
    assert all(r.ms > 0 for r in results)


@pytest.mark.parametrize("size", [(320, 240), (640, 360)])
def test_a_mover_is_boxed_where_it_was_drawn_in_frame_pixels(tmp_path: Path, size: tuple[int, int]) -> None:
    clip = moving_clip(tmp_path / "moving.mp4", seconds=3.0, size=size)
    results = run(clip)
    drawn = clip.object_boxes
    motion = {i for i, r in enumerate(results) if r.motion}
    in_view = {i for i, b in enumerate(drawn) if b is not None}
    assert motion <= in_view, "no motion before the mover enters"
    wide = {i for i in in_view if drawn[i][2] - drawn[i][0] >= size[0] // 40}  # type: ignore[index]
    assert wide <= motion, "motion on every frame where more than a sliver of the mover is in view"
    for i, (r, obj) in enumerate(zip(results, drawn, strict=True)):
        if not r.motion or obj is None:
            continue
        assert len(r.boxes) <= MAX_MOTION_BOXES
        assert all(0 <= b[0] < b[2] <= size[0] and 0 <= b[1] < b[3] <= size[1] for b in r.boxes), r.boxes
        if obj[2] - obj[0] >= 16:  # (a sliver at the edge is found, but its box is less exact)
            # A patch of the mover that matches the background may split it: together its boxes cover it.
            assert covers(union(b for b in r.boxes if overlaps(b, obj)), obj), f"frame {i}: {obj} vs {r.boxes}"
        # Nothing elsewhere: every box touches the mover (its previous position included: it moves ~13 px).
        step = size[0] // 20
        assert all(overlaps(b, obj, margin=step) for b in r.boxes), f"frame {i}: {r.boxes} away from {obj}"


@pytest.mark.parametrize("improve_contrast", [True, False], ids=["contrast", "no-contrast"])
@pytest.mark.parametrize("gain", [0.4, 2.0], ids=["darker-x0.4", "brighter-x2"])
def test_a_lighting_step_is_not_motion_for_long(tmp_path: Path, gain: float, improve_contrast: bool) -> None:
    """An IR switch or a cloud: the whole scene's brightness jumps at one frame. At most a couple of frames
    may read as motion; after that, none (the background restarts instead of catching up for minutes)."""
    clip = lighting_step_clip(tmp_path / "step.mp4", seconds=4.0, gain=gain)
    assert clip.step_frame is not None
    results = run(clip, MotionConfig(improve_contrast=improve_contrast))
    motion = [i for i, r in enumerate(results) if r.motion]
    assert all(clip.step_frame <= i < clip.step_frame + 2 for i in motion), f"motion at {motion}"
    lighting = [i for i, r in enumerate(results) if r.lighting_change]
    assert all(i >= clip.step_frame for i in lighting) and len(lighting) <= 2
    if gain > 1 or not improve_contrast:  # darker with contrast on: the stretch alone absorbs it, no restart
        assert lighting, "the step is counted as a lighting change"
    assert not results[-1].motion and results[-1].changed_fraction < 0.01


def test_a_motion_mask_hides_motion_inside_it(tmp_path: Path) -> None:
    clip = moving_clip(tmp_path / "right.mp4", seconds=3.0, region=RIGHT_HALF)
    unmasked = run(clip)
    seen = [i for i, r in enumerate(unmasked) if r.motion]
    assert seen, "the mover is seen without a mask"
    assert all(b[0] >= 320 // 2 - TOLERANCE for i in seen for b in unmasked[i].boxes)
    masked = run(clip, MotionConfig(mask=[[[0.45, 0.0], [1.0, 0.0], [1.0, 1.0], [0.45, 1.0]]]))
    assert [i for i, r in enumerate(masked) if r.motion or r.changed_fraction] == []


def test_a_new_frame_size_recalibrates_and_boxes_follow_it() -> None:
    det = MotionDetector(MotionConfig(), (320, 240))
    rng = np.random.default_rng(1)

    def frame(w: int, h: int, square: tuple[int, int] | None) -> np.ndarray:
        ramp = np.linspace(60, 200, w, dtype=np.float32)[None, :, None]  # a scene with a range of grey levels
        img = (np.broadcast_to(ramp, (h, w, 3)) + rng.normal(0, 2, (h, w, 3))).clip(0, 255).astype(np.uint8)
        if square is not None:
            img[square[1] : square[1] + h // 6, square[0] : square[0] + w // 8] = 10
        return img

    for _ in range(CALIBRATION_FRAMES):
        assert det.detect(frame(320, 240, None)).calibrating
    assert det.detect(frame(320, 240, (100, 100))).motion
    first = det.detect(frame(1280, 720, None))
    assert first.calibrating and det.frame_wh == (1280, 720) and det.small_wh == (284, 160)
    for _ in range(CALIBRATION_FRAMES - 1):
        det.detect(frame(1280, 720, None))
    r = det.detect(frame(1280, 720, (800, 400)))
    assert r.motion and any(covers(b, (800, 400, 800 + 160, 400 + 120), tol=10) for b in r.boxes), r.boxes


def test_many_movers_are_merged_into_at_most_a_slot_of_boxes() -> None:
    det = MotionDetector(MotionConfig(), (640, 480))
    still = np.full((480, 640, 3), 120, np.uint8)
    for _ in range(CALIBRATION_FRAMES):
        det.detect(still)
    busy = still.copy()
    spots = [(40 + 70 * c, 30 + 70 * r) for r in range(6) for c in range(8)]  # 48 separate movers
    for x, y in spots:
        busy[y : y + 20, x : x + 20] = 250
    r = det.detect(busy)
    assert r.motion and 1 <= len(r.boxes) <= MAX_MOTION_BOXES
    for x, y in spots:  # every mover is inside some box
        assert any(covers(b, (x, y, x + 20, y + 20), tol=2) for b in r.boxes), (x, y)
    assert not any(overlaps(a, b) for i, a in enumerate(r.boxes) for b in r.boxes[i + 1 :])


def test_merge_boxes_joins_overlaps_then_the_cheapest_pairs() -> None:
    assert merge_boxes([(0, 0, 10, 10), (5, 5, 20, 20), (30, 30, 40, 40)], 16) == [(0, 0, 20, 20), (30, 30, 40, 40)]
    assert merge_boxes([(0, 0, 10, 10), (10, 0, 20, 10)], 16) == [(0, 0, 20, 10)], "touching boxes join"
    # Over the limit: the smallest box joins the partner whose union grows least (the near one).
    merged = merge_boxes([(0, 0, 100, 100), (102, 0, 104, 2), (300, 300, 400, 400)], 2)
    assert merged == [(0, 0, 104, 100), (300, 300, 400, 400)]
    assert merge_boxes([], 16) == []


# ---- capture loop -> ring -> reader --------------------------------------------------------------------


def camera(source: Path, **kw: object) -> CameraConfig:
    return CameraConfig.model_validate({"name": "t", "source": str(source), "realtime": False, **kw})


def capture(clip: Clip, cam: CameraConfig) -> tuple[list, CaptureLoop]:
    """Capture the whole clip into a ring with a slot per frame; read every frame back from an attached reader."""
    w, h = clip.size
    with FrameRing.create(clip.frames + 1, h, w) as ring:
        loop = CaptureLoop(cam, ring)
        loop.start()
        loop.join(60)
        assert loop.finished and loop.counters.frames == clip.frames
        assert loop.counters.ended and not loop.counters.connected, "a file's end, not a lost camera"
        reader = FrameRing.attach(ring.spec)
        try:
            views = [reader.read_seq(s) for s in range(1, clip.frames + 1)]
            metas = [v.meta for v in views if v is not None]
        finally:
            reader.close()
    assert len(metas) == clip.frames
    return metas, loop


def test_capture_carries_motion_and_boxes_to_a_reader(tmp_path: Path) -> None:
    clip = moving_clip(tmp_path / "moving.mp4", seconds=3.0)
    metas, loop = capture(clip, camera(clip.path))
    assert all(m.motion is not None for m in metas)
    moving = [i for i, m in enumerate(metas) if m.motion]
    assert moving and all(clip.object_boxes[i] is not None for i in moving)
    assert all(not m.motion_boxes for m in metas if not m.motion)
    for i in moving:
        obj = clip.object_boxes[i]
        assert obj is not None and all(overlaps(b, obj, margin=20) for b in metas[i].motion_boxes)
    c = loop.counters
    assert c.motion_enabled and c.motion_checked == clip.frames and c.motion_frames == len(moving)
    stats = CameraStats("t", c).as_dict()["motion"]
    assert stats["enabled"] and stats["motion_frames"] == len(moving) and stats["lighting_changes"] == 0
    assert CameraStats("t", c).as_dict()["ended"] and "| source ended" in CameraStats("t", c).status_line()
    assert stats["active_fraction"] == round(len(moving) / clip.frames, 3) and stats["ms_avg"] > 0
    doc = stats_document("dev", 1.0, {}, None, [CameraStats("t", c)], {})
    text = Metrics(lambda: doc).render().decode()
    assert f'vigil_motion_frames_total{{camera="t"}} {float(len(moving))}' in text
    assert 'vigil_motion_lighting_changes_total{camera="t"} 0.0' in text


def test_capture_of_a_still_scene_writes_no_motion(tmp_path: Path) -> None:
    clip = static_clip(tmp_path / "still.mp4", seconds=2.0)
    metas, loop = capture(clip, camera(clip.path))
    assert [m.motion for m in metas] == [False] * clip.frames
    assert loop.counters.motion_frames == 0 and loop.counters.motion_checked == clip.frames


def test_capture_with_motion_off_writes_none(tmp_path: Path) -> None:
    clip = moving_clip(tmp_path / "moving.mp4", seconds=1.0)
    metas, loop = capture(clip, camera(clip.path, motion={"enabled": False}))
    assert [(m.motion, m.motion_boxes) for m in metas] == [(None, ())] * clip.frames
    assert not loop.counters.motion_enabled and loop.counters.motion_checked == 0
    stats = CameraStats("t", loop.counters).as_dict()["motion"]
    assert stats == {"enabled": False, "motion_frames": 0, "active_fraction": None, "lighting_changes": 0,
                     "ms_avg": None}  # fmt: skip


def test_a_motion_change_in_a_reload_goes_to_the_running_capture(tmp_path: Path) -> None:
    """A new `motion` section restarts no capture (an RTSP reconnect costs seconds of video): the plan applies it
    live, and the capture thread rebuilds its detector at the next frame, with every frame still captured."""
    old = camera(Path("cam.mp4"))
    new = camera(Path("cam.mp4"), motion={"threshold": 30, "mask": [RIGHT_HALF]})
    changes, keys = camera_changes([old], [new])
    assert (changes.changed, changes.motion) == ((), ("t",))
    assert keys == ["cameras.t.motion.mask", "cameras.t.motion.threshold"]
    clip = moving_clip(tmp_path / "moving.mp4", seconds=3.0)
    w, h = clip.size
    with FrameRing.create(clip.frames + 1, h, w) as ring:
        loop = CaptureLoop(camera(clip.path, realtime=True, fps=30), ring)
        loop.start()
        assert wait_until(lambda: loop.counters.frames >= 20, 60)
        loop.set_motion(MotionConfig(enabled=False))
        loop.join(60)
        assert loop.finished and loop.counters.frames == clip.frames, "one capture, every frame"
        reader = FrameRing.attach(ring.spec)
        try:
            views = [reader.read_seq(s) for s in range(1, clip.frames + 1)]
            verdicts = [v is not None and v.meta.motion is not None for v in views]
        finally:
            reader.close()
    switch = verdicts.index(False)
    assert switch >= 20 and not any(verdicts[switch:]), "on until the change, off from the next frame on"
    assert loop.counters.motion_enabled is False


def test_a_motion_change_survives_a_capture_watchdog_restart(tmp_path: Path) -> None:
    """A reload while the capture hangs in a driver read: the watchdog's replacement loop (built from the stuck
    loop's `camera`) starts with the reloaded motion section, not the one it was first built with."""
    clip = moving_clip(tmp_path / "moving.mp4", seconds=3.0)
    w, h = clip.size
    cam = camera(clip.path, realtime=True, fps=30, loop=True)
    with FrameRing.create(4, h, w) as ring:
        loop = CaptureLoop(cam, ring, faults=FaultsConfig(capture_hang_after_frames=10, capture_hang_s=5.0))
        loop.start()
        assert wait_until(lambda: loop.counters.frames >= 10, 60)
        loop.set_motion(MotionConfig(enabled=False))  # the hung loop never reaches another frame
        captures = {"t": loop}
        watchdog = CaptureWatchdog(0.01, lambda camera, reason: None)
        assert wait_until(lambda: watchdog.check(captures, {"t": ring}) == ["t"], 30)
        fresh = captures["t"]
        try:
            checked = loop.counters.motion_checked
            assert wait_until(lambda: fresh.counters.frames >= 20, 60)
            assert fresh.camera.motion.enabled is False and fresh.counters.motion_enabled is False
            assert fresh.counters.motion_checked == checked, "no frame of the new loop went through motion"
        finally:
            fresh.stop()
            fresh.join(10)
            loop.join(10)


@pytest.mark.parametrize("gain", [0.4, 2.0], ids=["darker-x0.4", "brighter-x2"])
def test_a_mover_stays_seen_through_a_lighting_step_and_nothing_else_moves(tmp_path: Path, gain: float) -> None:
    clip = moving_clip(tmp_path / "mover-step.mp4", seconds=4.0, lighting_step=(15, gain))
    results = run(clip)
    band = (0, 80 - 2 * TOLERANCE, 320, 160 + 2 * TOLERANCE)  # the rows the mover crosses (y 80..160)
    for i, (r, obj) in enumerate(zip(results, clip.object_boxes, strict=True)):
        if obj is None or obj[2] - obj[0] < 16 or i in (15, 16):  # the step frame and the next may be anything
            continue
        assert r.motion, f"frame {i}: the mover is lost"
        assert covers(union(b for b in r.boxes if overlaps(b, obj)), obj), f"frame {i}: {obj} vs {r.boxes}"
        assert all(overlaps(b, band) for b in r.boxes), f"frame {i}: motion away from the mover {r.boxes}"


def test_capture_counts_a_lighting_change(tmp_path: Path) -> None:
    clip = lighting_step_clip(tmp_path / "step.mp4", seconds=3.0, gain=2.0)
    metas, loop = capture(clip, camera(clip.path))
    step = clip.step_frame
    assert step is not None
    assert all(step <= i < step + 2 for i, m in enumerate(metas) if m.motion), "a couple of frames at most"
    assert loop.counters.lighting_changes >= 1
    assert CameraStats("t", loop.counters).as_dict()["motion"]["lighting_changes"] == loop.counters.lighting_changes
