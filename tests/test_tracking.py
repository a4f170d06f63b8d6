"""The IoU tracker, the object lifecycle that turns tracks into new/update/end/alert events, and the tracking
stage that runs both per camera on the pipeline's records."""

from __future__ import annotations

import numpy as np
import pytest

from app.config import AlertRule, VigilConfig
from app.pipeline.fanout import ResultFanout
from app.pipeline.records import ResultRecord
from app.pipeline.service import ServiceBase
from app.tracking.iou_tracker import IouTracker
from app.tracking.objects import ObjectEvent, ObjectLifecycle
from app.tracking.stage import TrackingStage, make_tracker
from app.types import Detections, FrameMeta, FrameResult, StageTimings

NAMES = {0: "Normal", 1: "Fall"}


def dets(*rows: tuple[float, float, float, float, float, int]) -> Detections:
    a = np.asarray(rows, np.float32).reshape(-1, 6)
    return Detections(a[:, :4].copy(), a[:, 4].copy(), a[:, 5].astype(np.int32))


def test_tracker_keeps_ids_of_moving_objects_and_across_label_change() -> None:
    tr = IouTracker(iou_threshold=0.2, max_age_s=1.0)
    ids = []
    for k in range(10):  # two people walking in opposite directions, 4 fps
        x = 10 * k
        cls_a = 0 if k < 6 else 1  # person A falls at k=6: same track
        ids.append(tr.update(dets((100 + x, 50, 160 + x, 200, 0.8, cls_a), (400 - x, 60, 460 - x, 210, 0.7, 0)),
                             k * 0.25).tolist())  # fmt: skip
    assert all(i == ids[0] for i in ids)
    assert ids[0][0] != ids[0][1]


def test_tracker_forgets_after_max_age_and_new_objects_get_new_ids() -> None:
    tr = IouTracker(max_age_s=1.0)
    a = tr.update(dets((0, 0, 50, 50, 0.9, 0)), 0.0)[0]
    assert tr.update(dets(), 0.5).size == 0
    assert tr.update(dets((0, 0, 50, 50, 0.9, 0)), 0.9)[0] == a  # within max age
    assert tr.update(dets((0, 0, 50, 50, 0.9, 0)), 3.0)[0] != a  # forgotten, new id


def run(lc: ObjectLifecycle, frames: list[tuple[float, Detections]]) -> list[tuple[float, str]]:
    tr = IouTracker(max_age_s=lc.lost_s)
    out = []
    for t, d in frames:
        for ev in lc.update(d, tr.update(d, t), (640, 480), t, 1_700_000_000 + t):
            out.append((t, ev.type))
    return out


def test_lifecycle_new_after_min_hits_throttled_updates_and_end() -> None:
    lc = ObjectLifecycle(NAMES, min_hits=2, update_interval_s=5.0, lost_s=2.0)
    person = dets((100, 100, 200, 300, 0.8, 0))
    frames = [(t * 0.25, person) for t in range(60)]  # 15 s visible
    frames += [(15 + t * 0.25, dets()) for t in range(12)]  # then gone for 3 s
    events = run(lc, frames)
    types = [e for _, e in events]
    assert types[0] == "new" and events[0][0] == 0.25  # second sighting
    assert types.count("update") == 2  # 15 s visible, one update per 5 s at most
    assert types[-1] == "end" and 16.75 < events[-1][0] <= 17.25  # last seen 14.75, lost after 2 s
    assert lc.counts() == {"Normal": 0, "Fall": 0, "all": 0}


def test_lifecycle_label_change_is_an_update_and_alert_needs_duration() -> None:
    rule = AlertRule(label="Fall", min_confidence=0.6, min_duration_s=1.0)
    lc = ObjectLifecycle(NAMES, min_hits=1, update_interval_s=100, lost_s=2.0, alerts=[rule])
    frames = [(t * 0.25, dets((100, 100, 200, 300, 0.8, 0))) for t in range(4)]
    frames += [(1.0 + t * 0.25, dets((100, 150, 260, 300, 0.55 if t < 2 else 0.9, 1))) for t in range(12)]
    events = run(lc, frames)
    assert [e for _, e in events][:2] == ["new", "update"]  # Normal -> Fall
    alerts = [t for t, e in events if e == "alert"]
    # confident Fall from t=1.5; alert one second later, exactly once
    assert alerts == [2.5]
    assert lc.counts()["Fall"] == 1 and lc.counts()["all"] == 1
    ended = lc.end_all("detection switched off")
    assert [e.type for e in ended] == ["end"] and lc.counts()["all"] == 0


def test_unannounced_objects_end_silently() -> None:
    lc = ObjectLifecycle(NAMES, min_hits=3, lost_s=1.0)
    events = run(lc, [(0.0, dets((0, 0, 10, 10, 0.9, 0))), (5.0, dets())])
    assert events == []


def test_bytetrack_adapter_when_installed() -> None:
    pytest.importorskip("trackers", reason="the optional `tracking` extra is not installed")
    from app.tracking.bytetrack import ByteTrack

    bt = ByteTrack(fps=5.0)
    ids = [bt.update(dets((100 + 10 * k, 50, 160 + 10 * k, 200, 0.8, 0)), k * 0.2).tolist() for k in range(6)]
    assert ids[-1][0] > 0 and len({i[0] for i in ids[1:]}) == 1


def test_tracker_choice_from_config() -> None:
    assert isinstance(make_tracker("iou", 2.0), IouTracker)
    try:
        import trackers  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="tracking"):
            make_tracker("bytetrack", 2.0)


# ---- the tracking stage -----------------------------------------------------------------------------


def stage_config(**tracking) -> VigilConfig:
    return VigilConfig.model_validate(
        {"cameras": [{"name": "door", "source": "x.mp4"}, {"name": "yard", "source": "y.mp4"}], "tracking": tracking}
    )


def record(cam: str, t: float, det: Detections, seq: int = 1) -> ResultRecord:
    """A result of `cam` received at monotonic `t` seconds, 640x480."""
    ns = int(t * 1e9)
    meta = FrameMeta(seq, seq - 1, t, ns, 1_700_000_000 + t, 480, 640)
    return ResultRecord(FrameResult(cam, meta, det, StageTimings(1, 5, 1), ns, ns, 1), NAMES, ns, 0)


def feed(stage: TrackingStage, frames: list[tuple[float, Detections]], cam: str = "door") -> list[ResultRecord]:
    return [stage.process(record(cam, t, d, seq=i + 1)) for i, (t, d) in enumerate(frames)]


def test_stage_records_carry_track_ids_events_and_counts_and_the_input_stays_as_it_was() -> None:
    rule = {"label": "Fall", "min_confidence": 0.6, "min_duration_s": 1.0}
    stage = TrackingStage(stage_config(min_hits=2, event_update_interval_s=100, track_lost_s=2.0, alerts=[rule]),
                          wall_clock=lambda: 1_700_000_000.0)  # fmt: skip
    frames = [(t * 0.25, dets((100, 100, 200, 300, 0.8, 0))) for t in range(4)]  # Normal for 1 s
    frames += [(1.0 + t * 0.25, dets((100, 150, 260, 300, 0.9, 1))) for t in range(8)]  # then fallen for 2 s
    frames += [(3.0 + t * 0.25, dets()) for t in range(12)]  # then gone for 3 s
    stage.on_model_ready(NAMES)
    records = [record("door", t, d, seq=i + 1) for i, (t, d) in enumerate(frames)]
    out = [stage.process(r) for r in records]
    assert all(r.tracker_id is None and r.events == () and r.object_counts == {} for r in records), "left as is"
    track = int(out[0].tracker_id[0])
    assert track >= 1 and all(r.tracker_id.tolist() == [track] for r in out[:12]), "one object, one id"
    assert out[0].as_json()["detections"][0]["track_id"] == track  # JSON lines see the id
    kinds = [(i, e.type) for i, r in enumerate(out) for e in r.events]
    assert kinds == [(1, "new"), (4, "update"), (8, "alert"), (20, "end")]  # alert 1 s after the fall at t=1.0
    assert out[4].events[0].reason == "label changed" and out[8].events[0].rule.label == "Fall"
    assert out[1].events[0].obj["first_seen"] == "2023-11-14T22:13:20.000Z", "the injected wall clock"
    assert dict(out[0].object_counts) == {"Normal": 0, "Fall": 0, "all": 0}  # not announced yet
    assert dict(out[1].object_counts) == {"Normal": 1, "Fall": 0, "all": 1}
    assert dict(out[19].object_counts) == {"Normal": 0, "Fall": 1, "all": 1}
    assert dict(out[20].object_counts) == {"Normal": 0, "Fall": 0, "all": 0}
    assert dict(stage.counts("door")) == {"Normal": 0, "Fall": 0, "all": 0}
    assert out[-1].tracker_id.shape == (0,) and out[-1].events == ()


def test_stage_tracks_each_camera_on_its_own_and_nothing_before_a_model_serves() -> None:
    stage = TrackingStage(stage_config(min_hits=1))
    before = record("door", 0.0, dets((0, 0, 50, 50, 0.9, 0)))
    assert stage.process(before) is before and stage.counts("door") == {}
    stage.on_model_ready(NAMES)
    door = feed(stage, [(0.0, dets((0, 0, 50, 50, 0.9, 0)))], cam="door")
    yard = feed(stage, [(0.0, dets((0, 0, 50, 50, 0.9, 1)))], cam="yard")
    assert [e.type for e in door[0].events] == ["new"] and [e.type for e in yard[0].events] == ["new"]
    assert stage.counts("door")["Normal"] == 1 and stage.counts("yard") == {"Normal": 0, "Fall": 1, "all": 1}


def test_stage_detection_switched_off_ends_the_objects_and_tracks_nothing_until_on() -> None:
    stage = TrackingStage(stage_config(min_hits=1, track_lost_s=2.0))
    stage.on_model_ready(NAMES)
    person = dets((100, 100, 200, 300, 0.8, 0))
    feed(stage, [(0.0, person), (0.25, person)])
    assert stage.counts("door")["all"] == 1
    ended = stage.set_detection("door", False)
    assert [(e.type, e.reason, e.obj["label"]) for e in ended] == [("end", "detection switched off", "Normal")]
    assert stage.counts("door")["all"] == 0
    assert stage.set_detection("door", False) == [], "already off: nothing more ends"
    late = record("door", 0.5, person)  # an answer in flight when detection went off
    assert stage.process(late) is late, "off: passed through, no track ids, no events"
    assert stage.set_detection("door", True) == [] and stage.set_detection("nocam", False) == []
    (again,) = feed(stage, [(1.0, person)])
    assert [e.type for e in again.events] == ["new"] and again.object_counts["all"] == 1


def test_a_model_with_other_labels_ends_the_objects_and_the_services_hear_it_first() -> None:
    """A deployment that changes the labels starts tracking afresh: the objects tracked so far end (reason
    `model labels changed`) before the services learn the new labels, so MQTT counts and zone occupancy do
    not stay on objects no one tracks any more. The same labels again (a worker restart) keep the tracks."""
    heard: list[tuple[str, str, str, str | None]] = []

    class Recorder(ServiceBase):
        def on_event(self, camera: str, event: ObjectEvent, record: ResultRecord | None = None) -> None:
            heard.append((camera, event.type, event.obj["label"], event.reason))

        def on_model_ready(self, names) -> None:
            heard.append(("-", "model_ready", ",".join(names.values()), None))

    stage = TrackingStage(stage_config(min_hits=1))
    fanout = ResultFanout([Recorder()], [stage])
    fanout.model_ready(NAMES)
    person = dets((100, 100, 200, 300, 0.8, 0))
    feed(stage, [(0.0, person), (0.25, person)])
    heard.clear()
    fanout.model_ready(dict(NAMES))
    assert heard == [("-", "model_ready", "Normal,Fall", None)] and stage.counts("door")["all"] == 1, "kept"
    heard.clear()
    fanout.model_ready({0: "person", 1: "car"})
    assert heard == [("door", "end", "Normal", "model labels changed"), ("-", "model_ready", "person,car", None)]
    assert dict(stage.counts("door")) == {"person": 0, "car": 0, "all": 0}
    (again,) = feed(stage, [(0.5, person)])
    [new] = again.events
    assert new.type == "new" and new.obj["label"] == "person", "tracked afresh under the new labels"


def test_stage_keeps_detections_out_of_every_track_out_of_the_lifecycle() -> None:
    """ByteTrack gives 0 to detections it keeps out of every track: they stay in the record (no track id)
    and never become objects."""

    class HalfTracker:
        def update(self, det: Detections, t: float, hold: object = ()) -> np.ndarray:
            return np.array([7, 0][: len(det)], np.int64)

        def forget(self, track_ids: object) -> None:
            pass

    stage = TrackingStage(stage_config(min_hits=1))
    stage._trackers["door"] = HalfTracker()
    stage.on_model_ready(NAMES)
    (r,) = feed(stage, [(0.0, dets((0, 0, 50, 50, 0.9, 0), (100, 100, 150, 150, 0.4, 1)))])
    assert r.tracker_id.tolist() == [7, 0] and len(r.detections) == 2
    assert [d["track_id"] for d in r.detections_list()] == [7, None]
    assert [(e.type, e.obj["id"], e.obj["label"]) for e in r.events] == [("new", 7, "Normal")]
    assert dict(r.object_counts) == {"Normal": 1, "Fall": 0, "all": 1}


@pytest.mark.parametrize("kind", ["iou", "bytetrack"])
def test_both_trackers_keep_held_tracks_between_rare_looks_and_forget_on_request(kind: str) -> None:
    """A stationary object (held by the stage) keeps its id across many frames without it; `forget` drops it."""
    if kind == "bytetrack":
        pytest.importorskip("trackers", reason="the optional `tracking` extra is not installed")
    tr = make_tracker(kind, 1.0)
    car = dets((100, 200, 300, 300, 0.9, 0))
    ids = [int(tr.update(car, k * 0.2)[0]) for k in range(5)][1:]  # ByteTrack confirms a track on its 2nd frame
    assert len(set(ids)) == 1 and ids[0] >= 1
    for k in range(5, 60):  # 11 s of frames without it (the detector looked elsewhere)
        tr.update(dets(), k * 0.2, hold=[ids[0]])
    assert int(tr.update(car, 12.0, hold=[ids[0]])[0]) == ids[0], "the same track after the look"
    tr.forget([ids[0]])
    for k in range(61, 80):
        tr.update(dets(), k * 0.2)
    assert int(tr.update(car, 16.0)[0]) != ids[0], "forgotten: a new track"


@pytest.mark.parametrize("kind", ["iou", "bytetrack"])
def test_a_held_track_jittering_before_it_stood_still_keeps_its_id_across_rare_re_checks(kind: str) -> None:
    """Field rule: a parked car's box jitters by a pixel or two between frames; that jitter is no velocity to carry
    over the 10 s between stationary re-checks (it moved the predicted box ~100 px: a new id at every re-check)."""
    if kind == "bytetrack":
        pytest.importorskip("trackers", reason="the optional `tracking` extra is not installed")
    tr = make_tracker(kind, 2.0)

    def car(shift: float) -> Detections:
        return dets((100 + shift, 200 + shift, 300 + shift, 300 + shift, 0.9, 0))

    # 12 s at 5 detections/s: a pixel of jitter, then it settles 2 px a frame (the tracker's velocity ~10 px/s)
    shifts = [float(k % 2) for k in range(55)] + [2.0, 4.0, 6.0, 8.0, 10.0]
    ids = [int(tr.update(car(d), k * 0.2)[0]) for k, d in enumerate(shifts)][1:]
    assert len(set(ids)) == 1
    track = ids[0]
    for look in range(1, 4):  # then one look every 10 s, nothing between (held as stationary)
        for k in range(1, 50):
            tr.update(dets(), 12 + (look - 1) * 10 + k * 0.2, hold=[track])
        assert int(tr.update(car(10.0), 12 + look * 10.0, hold=[track])[0]) == track, f"re-check {look}"
