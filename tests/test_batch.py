"""Batched detection over frames and regions (app/inference/batch.py) with the real default model on real frames
of bikes.mp4, held in a real frame ring: mapping back exactly, batching parity with batch 1, fixed-batch models,
overwritten frames, backend failures, and the merge of boxes across regions."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from app.config import ModelConfig
from app.engine.calibrate import evenly_spaced_frames
from app.inference.batch import FrameJob, batch_limit, detect_frames, merge_regions
from app.inference.decode import DecodeParams
from app.inference.detector import Detector
from app.inference.regions import full_frame
from app.letterbox import PAD_VALUE
from app.ring import FrameRing, FrameView
from app.types import Detections


@pytest.fixture(scope="module")
def coco(coco_model: Path) -> Iterator[Detector]:
    det = Detector.from_config(ModelConfig(path=str(coco_model), threads=1))
    yield det
    det.close()


@pytest.fixture(scope="module")
def frames(sample_video: Path) -> list[np.ndarray]:
    return [f for _, f in evenly_spaced_frames(sample_video, 4)]


@pytest.fixture
def rings() -> Iterator[list[FrameRing]]:
    made: list[FrameRing] = []
    yield made
    for r in made:
        r.close()
        r.unlink()


def _view(rings: list[FrameRing], image: np.ndarray, slots: int = 3) -> FrameView:
    ring = FrameRing.create(slots, image.shape[0], image.shape[1], prefix="vigil-test-batch")
    rings.append(ring)
    ring.write(image, index=0, pts=0.0, captured_mono_ns=time.monotonic_ns(), captured_wall=time.time())
    view = ring.read_latest()
    assert view is not None
    return view


def _same(a: Detections | None, b: Detections, atol: float = 0.0) -> None:
    assert a is not None
    assert len(a) == len(b)
    np.testing.assert_array_equal(a.class_id, b.class_id)
    if atol:
        np.testing.assert_allclose(a.xyxy, b.xyxy, atol=atol)
        np.testing.assert_allclose(a.confidence, b.confidence, atol=1e-4)
    else:
        np.testing.assert_array_equal(a.xyxy, b.xyxy)
        np.testing.assert_array_equal(a.confidence, b.confidence)


def test_whole_frame_region_gives_exactly_the_detector_boxes(coco: Detector, frames, rings) -> None:
    jobs = [FrameJob("cam", _view(rings, f), full_frame(f.shape[1], f.shape[0])) for f in frames]
    out = detect_frames(coco, jobs, max_batch=4)
    assert sum(len(o.detections or ()) for o in out) > 0, "the clip has objects"
    for o, f in zip(out, frames):
        assert o.error is None and o.job.regions == ((0, 0, 640, 272),)
        _same(o.detections, coco.detect(f)[0])
        assert o.timings.inference_ms > 0


def test_a_crop_maps_back_exactly(coco: Detector, frames, rings) -> None:
    """A frame shrunk to 416 wide on a grey (letterbox-grey) canvas: the 416 crop around it is, pixel for pixel,
    what the letterbox of the shrunk frame alone is, so its boxes are the shrunk frame's moved by the offset."""
    small = cv2.resize(frames[1], (416, 177), interpolation=cv2.INTER_AREA)
    ref = coco.detect(small)[0]
    assert len(ref) > 0
    top = coco.preprocess.geometry_for(small.shape[:2]).top  # where the letterbox puts it: 119
    canvas = np.full((1080, 1920, 3), PAD_VALUE, np.uint8)
    x0, y0 = 1100, 600
    canvas[y0 : y0 + 177, x0 : x0 + 416] = small
    region = (x0, y0 - top, x0 + 416, y0 - top + 416)
    (o,) = detect_frames(coco, [FrameJob("cam", _view(rings, canvas), (region,))])
    assert o.error is None and o.detections is not None
    got = o.detections.xyxy.copy()
    got[:, [0, 2]] = np.clip(got[:, [0, 2]] - x0, 0, 416)  # the reference is clipped to the shrunk frame
    got[:, [1, 3]] = np.clip(got[:, [1, 3]] - y0, 0, 177)
    np.testing.assert_allclose(got, ref.xyxy, atol=1e-3)
    np.testing.assert_array_equal(o.detections.class_id, ref.class_id)
    np.testing.assert_array_equal(o.detections.confidence, ref.confidence)


@pytest.mark.parametrize("shift", [32, -64])
def test_an_object_in_a_shifted_crop_is_found_at_the_same_place(coco: Detector, frames, rings, shift: int) -> None:
    """The same shrunk frame, placed in a 416 crop off the letterbox position by a multiple of the model's stride:
    the same objects, within a pixel of the full-frame boxes (clipped to the shrunk frame). Off-stride shifts change
    yolov3-tiny's answers themselves (its grid sees other pixels), which is not a mapping error."""
    small = cv2.resize(frames[2], (416, 177), interpolation=cv2.INTER_AREA)
    ref = coco.detect(small)[0]
    assert len(ref) > 0
    canvas = np.full((1080, 1920, 3), PAD_VALUE, np.uint8)
    x0, y0 = 1100, 600
    canvas[y0 : y0 + 177, x0 : x0 + 416] = small
    top = coco.preprocess.geometry_for(small.shape[:2]).top + shift
    (o,) = detect_frames(coco, [FrameJob("cam", _view(rings, canvas), ((x0, y0 - top, x0 + 416, y0 - top + 416),))])
    assert o.detections is not None and len(o.detections) == len(ref)
    got = o.detections.xyxy.copy()
    got[:, [0, 2]] = np.clip(got[:, [0, 2]] - x0, 0, 416)
    got[:, [1, 3]] = np.clip(got[:, [1, 3]] - y0, 0, 177)
    np.testing.assert_allclose(got, ref.xyxy, atol=1.0)
    np.testing.assert_array_equal(o.detections.class_id, ref.class_id)


def test_batched_equals_batch_one(coco: Detector, frames, rings) -> None:
    """Three frames with two crops each: six inputs as batches of 4 + 2 give the boxes of six batch-1 calls."""
    assert coco.batch_capacity > 4, "the default model has a dynamic batch axis"
    assert batch_limit(coco, 4) == 1, "no batching on the CPU by default"
    assert batch_limit(coco, 4, batch_on_cpu=True) == 4
    jobs = []
    for f in frames[:3]:
        big = cv2.resize(f, (1280, 544), interpolation=cv2.INTER_LINEAR)
        jobs.append(FrameJob("cam", _view(rings, big), ((0, 0, 544, 544), (736, 0, 1280, 544))))
    calls: list[int] = []
    infer = coco.backend.infer

    def counted(batch: np.ndarray) -> list[np.ndarray]:
        calls.append(batch.shape[0])
        return infer(batch)

    coco.backend.infer = counted  # type: ignore[method-assign]
    try:
        one = detect_frames(coco, jobs, max_batch=4)
        assert calls == [1] * 6
        calls.clear()
        batched = detect_frames(coco, jobs, max_batch=4, batch_on_cpu=True)
        assert calls == [4, 2]
    finally:
        del coco.backend.infer
    assert sum(len(o.detections or ()) for o in one) > 0
    for a, b in zip(batched, one):
        assert a.error is None and b.error is None
        _same(a.detections, b.detections or Detections.empty(), atol=1e-2)
        assert a.timings.inference_ms > 0


def test_fixed_batch_model_runs_one_call_per_input(tiny_model: Path, rings) -> None:
    det = Detector.from_config(ModelConfig(path=str(tiny_model)))
    try:
        assert det.batch_capacity == 1 and batch_limit(det, 8, batch_on_cpu=True) == 1
        img = np.zeros((128, 256, 3), np.uint8)
        regions = ((0, 0, 128, 128), (128, 0, 256, 128))
        out = detect_frames(det, [FrameJob("a", _view(rings, img), regions)] * 2, max_batch=8, batch_on_cpu=True)
        for o in out:
            assert o.error is None and o.detections is not None
            # the model's one centre box in each 128 crop (scale 2): at x 48..80 and 176..208
            np.testing.assert_allclose(sorted(o.detections.xyxy[:, 0].tolist()), [48, 176])
    finally:
        det.close()


def test_overwritten_frame_is_reported(coco: Detector, frames, rings) -> None:
    ring = FrameRing.create(2, 272, 640, prefix="vigil-test-batch")
    rings.append(ring)
    for i in range(1, 3):
        ring.write(frames[0], index=i, pts=0.0, captured_mono_ns=0, captured_wall=0.0)
    stale = ring.read_latest()
    assert stale is not None
    for i in range(3, 5):  # the slot is rewritten twice over
        ring.write(frames[1], index=i, pts=0.0, captured_mono_ns=0, captured_wall=0.0)
    fresh = _view(rings, frames[2])
    out = detect_frames(coco, [FrameJob("a", stale, full_frame(640, 272)), FrameJob("b", fresh, full_frame(640, 272))])
    assert out[0].error == "overwritten" and out[0].detections is None
    assert out[1].error is None
    _same(out[1].detections, coco.detect(frames[2])[0])


def test_backend_failure_fails_the_jobs_of_that_call(coco_model: Path, frames, rings) -> None:
    det = Detector.from_config(ModelConfig(path=str(coco_model), threads=1))
    det.backend.close()  # a real failure: the session is gone
    out = detect_frames(det, [FrameJob("a", _view(rings, frames[0]), full_frame(640, 272))] * 2, max_batch=2,
                        batch_on_cpu=True)  # fmt: skip
    assert [o.error for o in out] == ["BackendError: backend used before load()"] * 2
    assert all(o.detections is None for o in out)


def test_merge_drops_duplicates_and_boxes_cut_by_a_crop() -> None:
    params = DecodeParams(iou=0.7)
    left = (0, 0, 500, 500)
    right = (400, 0, 900, 500)
    # the same car seen whole in both crops, and a person cut by the left crop's right edge (x 499) that the
    # right crop sees whole
    a = Detections(np.array([[100, 100, 200, 200], [450, 50, 499, 300]], np.float32), np.array([0.9, 0.6], np.float32),
                   np.array([2, 0], np.int32))  # fmt: skip
    b = Detections(np.array([[101, 100, 201, 200], [450, 50, 560, 300]], np.float32), np.array([0.8, 0.7], np.float32),
                   np.array([2, 0], np.int32))  # fmt: skip
    m = merge_regions([(a, left), (b, right)], (1000, 500), params)
    assert len(m) == 2
    np.testing.assert_array_equal(m.xyxy, [[100, 100, 200, 200], [450, 50, 560, 300]])
    np.testing.assert_array_equal(m.class_id, [2, 0])
    # a cut box with nothing whole elsewhere is kept, and a box at the frame edge is never "cut"
    c = Detections(np.array([[0, 10, 499, 20]], np.float32), np.array([0.5], np.float32), np.array([1], np.int32))
    assert len(merge_regions([(c, left), (Detections.empty(), right)], (1000, 500), params)) == 1
    assert len(merge_regions([], (10, 10), params)) == 0


def test_regions_find_small_people_the_whole_frame_misses(coco: Detector, sample_video: Path) -> None:
    """Frames of bikes.mp4 scaled so its people are ~1/10 of a 1080p frame high, on a grey 1920x1080 canvas: crops
    around them (where motion would be) find them; the 416 letterbox of the whole frame shrinks them away. The same
    measurement as `vigil bench --modes small`, on two frames."""
    from app.bench.regions_bench import matched
    from app.inference.batch import StillFrame
    from app.inference.regions import plan_regions

    cap = cv2.VideoCapture(str(sample_video))
    frames = []
    while len(frames) <= 128:
        ok, f = cap.read()
        assert ok
        frames.append(f)
    cap.release()
    for index in (115, 128):
        f = frames[index]
        ref = coco.detect(f)[0]
        people = ref.xyxy[ref.class_id == 0]
        assert len(people) >= 2
        scale = 108 / float(np.median(people[:, 3] - people[:, 1]))
        sw, sh = round(640 * scale), round(272 * scale)
        canvas = np.full((1080, 1920, 3), PAD_VALUE, np.uint8)
        x0, y0 = (1920 - sw) // 2, (1080 - sh) // 2
        canvas[y0 : y0 + sh, x0 : x0 + sw] = cv2.resize(f, (sw, sh), interpolation=cv2.INTER_AREA)
        mapped = people * np.array([sw / 640, sh / 272, sw / 640, sh / 272], np.float32) + np.array(
            [x0, y0, x0, y0], np.float32
        )
        regions = plan_regions((1920, 1080), mapped.tolist(), [], coco.info.input_hw)
        assert regions != full_frame(1920, 1080) and len(regions) == 1
        crops, whole = detect_frames(
            coco,
            [FrameJob("a", StillFrame(canvas), regions), FrameJob("a", StillFrame(canvas), full_frame(1920, 1080))],
        )
        assert crops.detections is not None and whole.detections is not None
        found = matched(mapped, crops.detections.xyxy[crops.detections.class_id == 0])
        missed = matched(mapped, whole.detections.xyxy[whole.detections.class_id == 0])
        assert found >= 2 and missed == 0, (index, found, missed)
