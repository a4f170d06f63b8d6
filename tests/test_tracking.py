"""The IoU tracker and the object lifecycle that turns tracks into new/update/end/alert events."""

from __future__ import annotations

import numpy as np

from app.config import AlertRule
from app.tracking.iou_tracker import IouTracker
from app.tracking.objects import ObjectLifecycle
from app.types import Detections

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
    import pytest

    pytest.importorskip("trackers", reason="the optional `tracking` extra is not installed")
    from app.tracking.bytetrack import ByteTrack

    bt = ByteTrack(fps=5.0)
    ids = [bt.update(dets((100 + 10 * k, 50, 160 + 10 * k, 200, 0.8, 0)), k * 0.2).tolist() for k in range(6)]
    assert ids[-1][0] > 0 and len({i[0] for i in ids[1:]}) == 1


def test_tracker_choice_from_config() -> None:
    import pytest

    from app.mqtt.service import make_tracker

    assert isinstance(make_tracker("iou", 2.0), IouTracker)
    try:
        import trackers  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="tracking"):
            make_tracker("bytetrack", 2.0)
