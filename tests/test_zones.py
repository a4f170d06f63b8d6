"""Zones (inertia, labels, loitering, counts, alerts), object filters and masks, score thresholds, stationary
objects and the tracker's hints, on the tracking stage with explicit times; label validation; and one run of the
live pipeline with a real worker whose object events carry the zone fields."""

from __future__ import annotations

import math
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO, run_driven, wait_until
from support.onnx_models import bright_blob_model

from app.config import ConfigError, VigilConfig, load_config
from app.pipeline.live import LivePipeline
from app.pipeline.payloads import event_payload
from app.pipeline.records import ResultRecord
from app.pipeline.service import ServiceBase
from app.tracking.objects import ObjectEvent
from app.tracking.stage import TrackingStage
from app.types import Box, Detections, FrameMeta, FrameResult, StageTimings
from app.zones.filters import ObjectFilter
from app.zones.labels import model_labels, validate_labels

NAMES = {0: "Normal", 1: "Fall"}
W, H = 640, 480
LEFT_HALF = [[0.0, 0.0], [0.5, 0.0], [0.5, 1.0], [0.0, 1.0]]


def dets(*rows: tuple[float, float, float, float, float, int]) -> Detections:
    a = np.asarray(rows, np.float32).reshape(-1, 6)
    return Detections(a[:, :4].copy(), a[:, 4].copy(), a[:, 5].astype(np.int32))


def person(x: float, y: float = 100, score: float = 0.8, cls: int = 0, w: float = 100, h: float = 200) -> Detections:
    """One box whose bottom-centre is (x, y + h)."""
    return dets((x - w / 2, y, x + w / 2, y + h, score, cls))


def stage_with(camera: dict | None = None, **tracking) -> TrackingStage:
    cam = {"name": "door", "source": "x.mp4", **(camera or {})}
    tracking = {"min_hits": 1, "event_update_interval_s": 100, **tracking}
    stage = TrackingStage(VigilConfig.model_validate({"cameras": [cam], "tracking": tracking}), lambda: 1.7e9)
    stage.on_model_ready(NAMES)
    return stage


def record(t: float, det: Detections, seq: int, regions: tuple[Box, ...] = ()) -> ResultRecord:
    ns = int(t * 1e9)
    meta = FrameMeta(seq, seq - 1, t, ns, 1.7e9 + t, H, W)
    result = FrameResult("door", meta, det, StageTimings(1, 5, 1), ns, ns, 1, regions=regions)
    return ResultRecord(result, NAMES, ns, 0)


class Feeder:
    """Feeds a stage frames at explicit times and keeps the records and events."""

    def __init__(self, stage: TrackingStage) -> None:
        self.stage, self.seq, self.records = stage, 0, []

    def __call__(self, t: float, det: Detections, regions: tuple[Box, ...] = ()) -> ResultRecord:
        self.seq += 1
        out = self.stage.process(record(t, det, self.seq, regions))
        self.records.append(out)
        return out

    def events(self) -> list[tuple[float, ObjectEvent]]:
        return [(r.result.frame.pts, e) for r in self.records for e in r.events]


# ---- zones --------------------------------------------------------------------------------------------


def test_an_object_touching_the_bottom_of_the_frame_is_in_a_zone_and_a_mask_drawn_to_the_edge() -> None:
    """Boxes are clipped to the frame: a person close to the camera has its bottom-centre ON the bottom edge (y = H),
    and a zone or mask drawn to the frame's edge must hold it (field case: such objects were never in the zone)."""
    bottom = [[0.0, 0.5], [1.0, 0.5], [1.0, 1.0], [0.0, 1.0]]
    stage = stage_with({"zones": [{"name": "near", "polygon": bottom, "inertia": 1}]})
    feed = Feeder(stage)
    for k in range(2):
        feed(k * 0.25, person(320, y=H - 200))  # box bottom exactly at y = 480
    assert feed.events()[-1][1].obj["current_zones"] == ["near"]
    assert stage.zone_counts("door")["near"]["all"] == 1
    corner = person(W - 50, y=H - 200, w=100)  # clipped at the right edge too: bottom-centre (640, 480) is a corner
    cam = {"name": "door", "source": "x.mp4", "object_mask": [bottom]}
    masked = ObjectFilter(VigilConfig.model_validate({"cameras": [cam]}).cameras[0], NAMES)
    assert len(masked.apply(person(320, y=H - 200), (W, H))) == 0, "a mask to the bottom edge drops what stands on it"
    clipped = Detections(np.clip(corner.xyxy, 0, [W, H, W, H]), corner.confidence, corner.class_id)
    assert len(masked.apply(clipped, (W, H))) == 0


def test_an_object_crossing_into_a_zone_counts_after_inertia_frames_and_leaves_after_inertia_frames_out() -> None:
    stage = stage_with({"zones": [{"name": "left", "polygon": LEFT_HALF, "inertia": 3}]})
    feed = Feeder(stage)
    # walks left 20 px per frame from x=410 (bottom-centre) across the zone's edge at x=320
    xs = [410 - 20 * k for k in range(12)]  # 410..190: inside from x=310 (k=5) on
    for k, x in enumerate(xs):
        feed(k * 0.25, person(x))
    events = feed.events()
    assert [e.type for _, e in events] == ["new", "update"]
    assert events[0][1].obj["current_zones"] == [] and events[0][1].obj["entered_zones"] == []
    t, upd = events[1]
    assert t == 7 * 0.25, "inside from frame 5: counted in at its third frame inside (inertia 3), not before"
    assert upd.reason == "zones changed"
    assert upd.obj["current_zones"] == ["left"] and upd.obj["entered_zones"] == ["left"]
    assert upd.obj["stationary"] is False
    assert stage.zone_counts("door") == {"left": {"Normal": 1, "Fall": 0, "all": 1}}
    # and back out: two frames outside (x > 320; the edge itself counts as inside) are not enough, the third is
    for k, x in enumerate([200, 220, 240, 260, 280, 300, 330, 340], start=12):
        assert feed(k * 0.25, person(x)).events == ()
    (out,) = feed(20 * 0.25, person(360)).events
    assert (out.type, out.reason, out.obj["current_zones"], out.obj["entered_zones"]) == (
        "update", "zones changed", [], ["left"]
    )  # fmt: skip
    assert stage.zone_counts("door")["left"]["all"] == 0


def test_entered_zones_keep_the_first_entered_order_and_jitter_on_the_edge_does_not_flap() -> None:
    right = [[0.5, 0.0], [1.0, 0.0], [1.0, 1.0], [0.5, 1.0]]
    stage = stage_with({"zones": [{"name": "left", "polygon": LEFT_HALF, "inertia": 2},
                                  {"name": "right", "polygon": right, "inertia": 2}]})  # fmt: skip
    feed = Feeder(stage)
    for k, x in enumerate([340, 340, 330, 310, 330, 310, 330, 310]):  # jitters across x=320 frame by frame
        feed(k * 0.25, person(x))
    changes = [e.obj["current_zones"] for _, e in feed.events() if e.reason == "zones changed"]
    assert changes == [["right"]], "alternating sides never makes two frames in a row on the left"
    for k, x in enumerate([300, 290, 280], start=8):
        feed(k * 0.25, person(x))
    last = feed.events()[-1][1]
    assert last.obj["current_zones"] == ["left"] and last.obj["entered_zones"] == ["right", "left"]


def test_a_zone_with_labels_counts_only_those_labels() -> None:
    stage = stage_with({"zones": [{"name": "bed", "polygon": LEFT_HALF, "labels": ["Fall"], "inertia": 1}]})
    feed = Feeder(stage)
    feed(0.0, dets((50, 100, 150, 300, 0.8, 0), (200, 100, 300, 300, 0.8, 1)))  # a Normal and a Fall, both inside
    new = {e.obj["label"]: e.obj["current_zones"] for e in feed.records[0].events}
    assert new == {"Normal": [], "Fall": ["bed"]}
    assert stage.zone_counts("door") == {"bed": {"Fall": 1, "all": 1}}, "the zone's labels only"


def test_zone_counts_list_every_model_label_and_nothing_without_zones() -> None:
    stage = stage_with({"zones": [{"name": "left", "polygon": LEFT_HALF, "inertia": 1}]})
    assert stage.zone_counts("door") == {"left": {"Normal": 0, "Fall": 0, "all": 0}}
    assert stage_with().zone_counts("door") == {}
    assert (
        TrackingStage(VigilConfig.model_validate({"cameras": [{"name": "door", "source": "x"}]})).zone_counts("door")
        == {}
    ), "before a model serves"


def test_unannounced_objects_are_in_no_count_and_their_zone_changes_are_silent() -> None:
    stage = stage_with({"zones": [{"name": "left", "polygon": LEFT_HALF, "inertia": 1}]}, min_hits=3)
    feed = Feeder(stage)
    feed(0.0, person(100))
    assert feed.events() == [] and stage.zone_counts("door")["left"]["all"] == 0
    feed(0.25, person(100))
    (new,) = feed(0.5, person(100)).events
    assert new.type == "new" and new.obj["current_zones"] == ["left"] and new.obj["entered_zones"] == ["left"]
    assert stage.zone_counts("door")["left"]["all"] == 1


def test_loitering_is_one_update_per_stay() -> None:
    zone = {"name": "porch", "polygon": LEFT_HALF, "inertia": 1, "loitering_time_s": 2.0}
    stage = stage_with({"zones": [zone]})
    feed = Feeder(stage)
    for k in range(16):  # inside from t=0 to 3.75 s
        feed(k * 0.25, person(100 + (k % 2)))
    loiter = [(t, e) for t, e in feed.events() if e.reason == "loitering"]
    assert [(t, e.type, e.zone) for t, e in loiter] == [(2.0, "update", "porch")]
    xs = [125 + 25 * j for j in range(10)] + [325, 300] + [275] * 12  # out from x=325 (t=6), back in at 300
    for k, x in enumerate(xs, start=16):
        feed(k * 0.25, person(x))
    back = 16 * 0.25 + (len(xs) - 13) * 0.25  # the frame at x=300
    loiter = [t for t, e in feed.events() if e.reason == "loitering"]
    assert loiter == [2.0, back + 2.0], "once more after leaving and coming back"
    payload = event_payload("dev", "door", next(e for _, e in feed.events() if e.reason == "loitering"), None)
    assert (payload["type"], payload["reason"], payload["zone"]) == ("update", "loitering", "porch")
    assert payload["object"]["current_zones"] == ["porch"]


def test_an_alert_with_zones_fires_only_while_the_object_is_in_one_of_them() -> None:
    rule = {"label": "Normal", "min_confidence": 0.5, "min_duration_s": 1.0, "zones": ["left"]}
    stage = stage_with({"zones": [{"name": "left", "polygon": LEFT_HALF, "inertia": 1}]}, alerts=[rule])
    feed = Feeder(stage)
    # outside (x > 320) for 1.25 s, in for 0.75 s, out for a frame (the stretch restarts), in from t=2.5
    xs = [400, 380, 360, 340, 330] + [300] * 4 + [330] + [300] * 10
    for k, x in enumerate(xs):
        feed(k * 0.25, person(x))
    alerts = [t for t, e in feed.events() if e.type == "alert"]
    assert alerts == [3.5], "1 s after re-entering at 2.5"


def test_events_of_a_camera_without_zones_carry_empty_zone_fields() -> None:
    feed = Feeder(stage_with())
    (new,) = feed(0.0, person(100)).events
    assert (new.obj["current_zones"], new.obj["entered_zones"], new.obj["stationary"]) == ([], [], False)


def test_a_reload_applies_new_zones_and_filters_to_the_running_objects() -> None:
    stage = stage_with()
    feed = Feeder(stage)
    feed(0.0, person(100))
    cam = VigilConfig.model_validate({"cameras": [{
        "name": "door", "source": "x.mp4", "zones": [{"name": "left", "polygon": LEFT_HALF, "inertia": 1}],
        "filters": {"Fall": {"min_score": 0.9}},
    }]}).cameras  # fmt: skip
    stage.configure_cameras(cam)
    (upd,) = feed(0.25, person(100)).events
    assert (upd.reason, upd.obj["id"], upd.obj["current_zones"]) == ("zones changed", 1, ["left"]), "same object"
    assert len(feed(0.5, dets((100, 100, 200, 300, 0.8, 1))).detections) == 0, "the new filter applies"


# ---- filters, masks and thresholds -----------------------------------------------------------------------


def camera(**keys) -> VigilConfig:
    return VigilConfig.model_validate({"cameras": [{"name": "door", "source": "x.mp4", **keys}]})


@pytest.mark.parametrize(
    ("flt", "kept"),
    [
        ({"min_score": 0.5}, [False, True, True, True, True]),
        ({"min_area": 0.05}, [True, False, False, True, True]),  # 640x480: 0.05 = 15360 px2
        ({"max_area": 0.2}, [True, True, True, False, True]),
        ({"min_ratio": 0.4}, [True, False, True, True, True]),  # w/h
        ({"max_ratio": 2.0}, [True, True, True, True, False]),
        ({"mask": [[[0.0, 0.5], [1.0, 0.5], [1.0, 1.0], [0.0, 1.0]]]}, [False, False, True, False, False]),
    ],
)
def test_each_filter_key_drops_only_its_boxes_of_its_label(flt: dict, kept: list[bool]) -> None:
    det = dets(
        (100, 100, 200, 300, 0.3, 0),  # low score, 100x200: area 0.065, ratio 0.5, foot y=300 (lower half)
        (300, 100, 350, 300, 0.8, 0),  # thin: ratio 0.25, area 0.0326, foot y=300
        (400, 50, 450, 150, 0.8, 0),  # small: area 0.016, foot y=150 (upper half)
        (0, 0, 400, 400, 0.8, 0),  # large: area 0.52, foot y=400
        (10, 250, 310, 350, 0.8, 0),  # wide: ratio 3, foot y=350
    )
    f = ObjectFilter(camera(filters={"Normal": flt}).cameras[0], NAMES)
    assert f.keep(det, (W, H)).tolist() == kept
    other = Detections(det.xyxy, det.confidence, np.ones(5, np.int32))
    assert f.keep(other, (W, H)).all(), "a filter applies to its own label only"


def test_the_object_mask_drops_any_label_by_its_bottom_centre() -> None:
    f = ObjectFilter(camera(object_mask=[[[0.0, 0.0], [0.25, 0.0], [0.25, 1.0], [0.0, 1.0]]]).cameras[0], NAMES)
    det = dets((50, 50, 250, 300, 0.9, 0), (50, 50, 100, 300, 0.9, 1), (150, 50, 400, 300, 0.9, 1))
    # bottom-centres at x=150 (inside, < 160), 75 (inside), 275 (outside): the box overlapping the mask is kept
    assert f.keep(det, (W, H)).tolist() == [False, False, True]
    assert ObjectFilter(camera().cameras[0], NAMES).empty


def test_filtered_detections_never_reach_the_record_nor_the_tracker() -> None:
    stage = stage_with({"filters": {"Normal": {"min_score": 0.5}},
                        "object_mask": [[[0.0, 0.0], [0.25, 0.0], [0.25, 1.0], [0.0, 1.0]]]})  # fmt: skip
    r = Feeder(stage)(0.0, dets((300, 100, 400, 300, 0.4, 0), (50, 50, 100, 300, 0.9, 1), (400, 100, 500, 300, 0.9, 1)))
    assert r.detections.xyxy.tolist() == [[400, 100, 500, 300]] and r.tracker_id.tolist() == [1]
    assert [d["label"] for d in r.as_json()["detections"]] == ["Fall"] and stage.counts("door")["all"] == 1


def test_an_object_is_announced_once_the_median_of_its_recent_scores_reaches_its_threshold() -> None:
    stage = stage_with({"filters": {"Normal": {"threshold": 0.6}}}, min_hits=2)
    feed = Feeder(stage)
    scores = [0.5, 0.5, 0.9, 0.9, 0.9]  # medians 0.5, 0.5, 0.5, 0.7: announced at the 4th sighting
    for k, s in enumerate(scores):
        feed(k * 0.25, person(100, score=s))
    assert [(t, e.type) for t, e in feed.events()] == [(0.75, "new")]
    feed2 = Feeder(stage_with({"filters": {"Normal": {"threshold": 0.6}}}, min_hits=2))
    for k in range(12):
        feed2(k * 0.25, person(100, score=0.55))
    assert feed2.events() == [], "never real: below the threshold all along"


# ---- stationary objects and hints ----------------------------------------------------------------------


def test_an_object_that_stops_becomes_stationary_and_moving_again_ends_that() -> None:
    stage = stage_with(stationary_after_s=2.0)
    feed = Feeder(stage)
    for k in range(4):  # walking: 30 px per frame
        feed(k * 0.25, person(100 + 30 * k))
    for k in range(4, 16):  # stands at x=190 with a pixel of jitter
        feed(k * 0.25, person(190 + (k % 2)))
    still = [(t, e) for t, e in feed.events() if e.reason == "stationary"]
    assert [t for t, _ in still] == [2.75] and still[0][1].obj["stationary"] is True  # still since 0.75
    for k in range(16, 18):
        feed(k * 0.25, person(190 + 60 * (k - 15)))
    (t, moving) = feed.events()[-1]
    assert (t, moving.reason, moving.obj["stationary"]) == (4.0, "moving", False)


def test_a_stationary_object_does_not_end_while_the_detector_looks_elsewhere_and_ends_once_it_looks() -> None:
    stage = stage_with(stationary_after_s=1.0, track_lost_s=2.0, stationary_interval_s=10.0)
    feed = Feeder(stage)
    car = dets((100, 200, 300, 300, 0.9, 0))
    for k in range(8):
        feed(k * 0.25, car)
    assert stage.hint("door").active is False, "a stationary object does not keep the camera active"
    elsewhere = ((400, 0, 640, 240),)
    for k in range(40):  # 10 s of detections on a region away from the car, which finds nothing
        feed(2.0 + k * 0.25, dets(), elsewhere)
    assert [e.type for _, e in feed.events()] == ["new", "update"] and stage.counts("door")["all"] == 1
    hint = stage.hint("door")
    assert hint.recheck_boxes == ((96.0, 200.0, 304.0, 304.0),) and hint.recheck_mono == math.ceil(1.75 + 10.0)
    # the recheck finds it: the same object goes on, nothing is announced again
    r = feed(12.0, car, ((0, 0, 640, 480),))
    assert r.tracker_id.tolist() == [1] and r.events == ()
    assert stage.hint("door").recheck_mono == 22.0
    # looks at it that miss it: one is not enough (a false negative), a second one over track_lost_s ends it
    assert feed(13.0, dets(), ((400, 0, 640, 100),)).events == (), "not covered"
    assert feed(20.0, dets(), ((0, 100, 400, 400),)).events == (), "8 s unseen, but one look missed it"
    (end,) = feed(20.25, dets()).events
    assert (end.type, end.obj["id"], end.obj["stationary"]) == ("end", 1, True)
    assert stage.hint("door") == type(stage.hint("door"))("door", False)
    # the tracker forgot it too: a car there now is a new object
    assert feed(21.0, car).tracker_id.tolist() == [2]


def test_a_region_that_cuts_a_stationary_object_in_half_is_no_look_at_it() -> None:
    """A passer-by's crop holding a parked car's centre but half of the car may miss it: no miss counted."""
    stage = stage_with(stationary_after_s=1.0, track_lost_s=2.0, stationary_interval_s=10.0)
    feed = Feeder(stage)
    car = dets((100, 200, 400, 300, 0.9, 0))
    for k in range(8):
        feed(k * 0.25, car)
    half = ((240, 0, 640, 480),)  # holds the car's centre (250, 250) but only half of its box
    for t in (6.0, 7.0, 9.0, 11.0):
        assert feed(t, dets(), half).events == (), f"not a look at the car at {t}"
    assert stage.counts("door")["all"] == 1


def test_two_alert_rules_on_one_label_keep_their_own_stretches() -> None:
    zones = [{"name": "left", "polygon": LEFT_HALF, "inertia": 1},
             {"name": "right", "polygon": [[0.5, 0], [1, 0], [1, 1], [0.5, 1]], "inertia": 1}]  # fmt: skip
    rules = [{"label": "Normal", "min_duration_s": 1.0, "zones": ["left"]},
             {"label": "Normal", "min_duration_s": 1.0, "zones": ["right"]}]  # fmt: skip
    feed = Feeder(stage_with({"zones": zones}, alerts=rules))
    for k in range(12):  # in the right zone for 2.75 s: the first rule's broken stretch must not reset the second's
        feed(k * 0.25, person(500))
    alerts = [(t, e.rule.zones if e.rule else None) for t, e in feed.events() if e.type == "alert"]
    assert alerts == [(1.0, ["right"])]
    for k in range(12, 24):  # then in the left zone: the first rule fires too, once
        feed(k * 0.25, person(100))
    assert [e.rule.zones for _, e in feed.events() if e.type == "alert" and e.rule] == [["right"], ["left"]]


def test_a_moving_object_ages_in_every_frame_whatever_the_regions() -> None:
    stage = stage_with(track_lost_s=1.0)
    feed = Feeder(stage)
    feed(0.0, person(100))
    feed(0.25, person(120))
    ends = [feed(0.5 + k * 0.25, dets(), ((500, 0, 640, 100),)).events for k in range(5)]
    assert [e.type for ev in ends for e in ev] == ["end"] and ends[4], "ended at 1.5 s, over 1 s after last seen"


def test_hints_predict_moving_boxes_and_stay_the_same_under_pixel_jitter() -> None:
    stage = stage_with({"detect": {"fps": 4}})
    feed = Feeder(stage)
    feed(0.0, person(100))
    feed(0.25, person(140))  # 40 px per 0.25 s, the camera's detection interval
    hint = stage.hint("door")
    # box 130..230 x 100..300 next: grown 10 % (10 px, 20 px) and snapped outward to 8 px
    assert hint.active and hint.boxes == ((120.0, 80.0, 240.0, 320.0),) and hint.recheck_mono == 0.0
    stage2 = stage_with({"detect": {"fps": 4}})
    feed2 = Feeder(stage2)
    seen = set()
    for k in range(8):
        feed2(k * 0.25, person(300 + (k % 2)))
        seen.add(stage2.hint("door"))
    assert len(seen) == 1, "a pixel of jitter does not change the hint"
    assert stage_with().hint("door").active is False


# ---- label validation and config errors ------------------------------------------------------------------


def labelled(**keys) -> VigilConfig:
    return VigilConfig.model_validate({"cameras": [{"name": "door", "source": "x.mp4", **keys}]})


@pytest.mark.parametrize(
    ("cfg", "key"),
    [
        (labelled(zones=[{"name": "a", "polygon": LEFT_HALF}, {"name": "b", "polygon": LEFT_HALF,
                                                              "labels": ["Normal", "persn"]}]),
         "cameras.0.zones.1.labels: 'persn' is not a label of the model (Normal, Fall)"),
        (labelled(filters={"Fal": {"min_score": 0.5}}), "cameras.0.filters.Fal: 'Fal' is not a label"),
        (VigilConfig.model_validate({"cameras": [{"name": "door", "source": "x"}],
                                     "tracking": {"alerts": [{"label": "fall"}]}}),
         "tracking.alerts.0.label: 'fall' is not a label"),
        (VigilConfig.model_validate({"cameras": [{"name": "door", "source": "x", "zones": [
                                         {"name": "a", "polygon": LEFT_HALF, "labels": ["Fall"]}]}],
                                     "model": {"classes": ["Normal"]}}),
         "cameras.0.zones.0.labels: 'Fall' is left out by model.classes (Normal), so it is never detected"),
        (VigilConfig.model_validate({"cameras": [{"name": "door", "source": "x", "filters": {"Normal": {}}}],
                                     "model": {"classes": [1]}}),
         "cameras.0.filters.Normal: 'Normal' is left out by model.classes (Fall)"),
    ],
)  # fmt: skip
def test_an_unknown_label_is_an_error_naming_its_key(cfg: VigilConfig, key: str) -> None:
    with pytest.raises(ConfigError) as exc:
        validate_labels(cfg, NAMES)
    assert key in str(exc.value)
    validate_labels(cfg, {}), "unknown model labels: nothing to check"


def test_known_labels_pass_and_the_model_file_gives_its_labels(tiny_model: Path, tmp_path: Path) -> None:
    validate_labels(labelled(filters={"Fall": {}}, zones=[{"name": "a", "polygon": LEFT_HALF, "labels": ["Normal"]}]),
                    NAMES)  # fmt: skip
    for classes in (["normal"], ["NORMAL"], ["0"], [" 0"], [0], ["Normal", "car"]):  # as the worker reads them
        cfg = labelled(zones=[{"name": "a", "polygon": LEFT_HALF, "labels": ["Normal"]}])
        cfg.model.classes = list(classes)
        validate_labels(cfg, NAMES)
    cfg = VigilConfig.model_validate({"cameras": [{"name": "a", "source": "x"}], "model": {"path": str(tiny_model)}})
    assert model_labels(cfg.model) == {0: "person", 1: "fall"}
    cfg.model.path = str(tmp_path / "model.engine")
    assert model_labels(cfg.model) == {}, "an engine: known once the worker serves"


def test_a_served_model_without_a_configured_label_is_logged_as_an_error(caplog: pytest.LogCaptureFixture) -> None:
    stage = TrackingStage(labelled(filters={"car": {"min_score": 0.5}}))
    with caplog.at_level("ERROR"):
        stage.on_model_ready(NAMES)  # a TensorRT engine or a later deployment: known only now
    assert "config: cameras.0.filters.car: 'car' is not a label of the model (Normal, Fall)" in caplog.text


def test_vigil_run_refuses_an_unknown_label_before_it_starts(tiny_model: Path, small_video: Path,
                                                             tmp_path: Path) -> None:  # fmt: skip
    cfg = {"cameras": [{"name": "a", "source": str(small_video),
                        "zones": [{"name": "z", "polygon": LEFT_HALF, "labels": ["persn"]}]}],
           "model": {"path": str(tiny_model)}}  # fmt: skip
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = subprocess.run([sys.executable, "-m", "app", "run", "--config", str(path), "--duration", "5"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines() == [
        f"error: invalid config: {path}: cameras.0.zones.0.labels: 'persn' is not a label of the model (person, fall)"
    ], "one line, starting with the file as the config's other errors do"


@pytest.mark.parametrize(
    ("zones", "needle"),
    [
        ("[{name: a, polygon: [[0, 0], [1, 0]]}]", "cameras.0.zones.0.polygon: a polygon needs"),
        ("[{name: a, polygon: [[0, 0], [1.5, 0], [1, 1]]}]", "cameras.0.zones.0.polygon: point 1"),
        ("[{name: a, polygon: [[0, 0], [1, 1], [1, 0], [0, 1]]}]", "cameras.0.zones.0.polygon: the "
         "polygon is self-intersecting"),
        ("[{name: a, polygon: [[0, 0], [1, 0], [1, 1]]}, {name: a, polygon: [[0, 0], [1, 0], [1, 1]]}]",
         "cameras.0.zones.1.name: zone 'a' is defined twice"),
        ("[{name: a, polygon: [[0, 0], [.inf, 0], [1, 1]]}]", "zones.0.polygon.1.0: Input should be a finite"),
        ("[{name: a, polygon: [[0, 0], [1, 0], [1, 0], [0, 0]]}]", "cameras.0.zones.0.polygon: a polygon"),
        ("[{name: a, polygon: [[0, 0], [1, 0], [1, 1]], labels: []}]",
         "cameras.0.zones.0.labels: an empty list matches nothing (leave the key out to match any)"),
    ],
)  # fmt: skip
def test_bad_zones_are_errors_naming_the_key(tmp_path: Path, zones: str, needle: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"cameras: [{{name: door, source: x.mp4, zones: {zones}}}]\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert needle in str(exc.value)


def test_a_closed_polygon_with_its_first_point_repeated_is_accepted_as_drawn(tmp_path: Path) -> None:
    """GeoJSON and other NVRs write a polygon closed (the last point repeats the first), and editors leave
    doubled points: both are the same polygon, not a self-intersecting one."""
    path = tmp_path / "c.yaml"
    path.write_text("cameras: [{name: door, source: x.mp4, zones: [{name: a, polygon: "
                    "[[0, 0.5], [1, 0.5], [1, 1], [1, 1], [0, 1], [0, 0.5]]}]}]\n")  # fmt: skip
    assert load_config(path).cameras[0].zones[0].polygon == [[0, 0.5], [1, 0.5], [1, 1], [0, 1]]


@pytest.mark.parametrize(
    ("setting", "needle"),
    [
        ("cameras.0.detect.fps=.inf", "cameras.0.detect.fps: Input should be a finite number"),
        ("cameras.0.detect.fps=1e6", "cameras.0.detect.fps: Input should be less than or equal to 100"),
        ("tracking.stationary_interval_s=.inf", "tracking.stationary_interval_s: Input should be a finite number"),
        ("cameras.0.detect.idle_interval_s=.nan", "cameras.0.detect.idle_interval_s: Input should be a finite"),
    ],
)
def test_non_finite_and_out_of_range_schedule_settings_are_errors_naming_the_key(setting: str, needle: str) -> None:
    """An infinite fps weight starved every other camera; an infinite re-check interval overflowed the hints."""
    with pytest.raises(ConfigError) as exc:
        load_config(None, ["cameras.0.name=door", "cameras.0.source=x.mp4", setting])
    assert needle in str(exc.value)


def test_bad_masks_and_filters_are_errors_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    for text, needle in [
        ("object_mask: [[[0, 0], [2, 0], [1, 1]]]", "cameras.0.object_mask.0: point 1"),
        ("filters: {person: {mask: [[[0, 0], [1, 0]]]}}", "cameras.0.filters.person.mask.0:"),
        ("filters: {person: {min_area: 0.5, max_area: 0.1}}", "min_area 0.5 is above max_area 0.1"),
    ]:
        path.write_text(f"cameras: [{{name: door, source: x.mp4, {text}}}]\n")
        with pytest.raises(ConfigError) as exc:
            load_config(path)
        assert needle in str(exc.value)


# ---- end to end -------------------------------------------------------------------------------------


class EventLog(ServiceBase):
    """Keeps every object event and the last record's zone counts."""

    def __init__(self) -> None:
        self.events: list[ObjectEvent] = []
        self.lock = threading.Lock()

    def on_event(self, camera: str, event: ObjectEvent, record: ResultRecord | None) -> None:
        with self.lock:
            self.events.append(event)


def crossing_clip(path: Path, frames: int = 60) -> Path:
    """160x120, 25 fps: a bright 24 px square moving right 2 px a frame from x=8; its bottom-centre crosses the
    middle of the frame (x=80) at frame 30."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (160, 120))
    assert writer.isOpened()
    for i in range(frames):
        img = np.full((120, 160, 3), 40, np.uint8)
        img[40:64, 8 + 2 * i : 32 + 2 * i] = 230
        writer.write(img)
    writer.release()
    return path


def test_an_object_crossing_into_a_zone_in_a_live_pipeline(tmp_path: Path) -> None:
    model = bright_blob_model(tmp_path / "blob.onnx")
    cam = {
        "name": "cam", "source": str(crossing_clip(tmp_path / "cross.mp4")), "loop": True, "realtime": True,
        "fps": 10, "zones": [{"name": "right", "polygon": [[0.5, 0.0], [1.0, 0.0], [1.0, 1.0], [0.5, 1.0]]}],
    }  # fmt: skip
    cfg = VigilConfig.model_validate({
        "cameras": [cam], "model": {"path": str(model), "threads": 1},
        "output": {"json_lines": False, "status_interval_s": 0}, "tracking": {"min_hits": 2},
    })  # fmt: skip
    log = EventLog()
    pipe = LivePipeline(cfg, [log])
    counts: dict = {}

    def crossed() -> list[ObjectEvent]:
        with log.lock:
            return [e for e in log.events if e.reason == "zones changed" and e.obj["current_zones"] == ["right"]]

    def driver() -> None:
        assert wait_until(lambda: len(crossed()) >= 1, 120), [(e.type, e.reason, e.obj) for e in log.events]
        counts.update(pipe.zone_counts("cam"))

    run_driven(pipe, driver)
    entered = crossed()[0]
    new = next(e for e in log.events if e.type == "new" and e.obj["id"] == entered.obj["id"])
    assert new.obj["current_zones"] == [] and new.obj["box"][0] < 80, "announced on the left, outside the zone"
    assert entered.type == "update" and entered.obj["entered_zones"] == ["right"]
    x1, _, x2, _ = entered.obj["box"]
    assert (x1 + x2) / 2 >= 80, "its bottom-centre is past the zone's edge"
    assert set(counts) == {"right"} and set(counts["right"]) == {"person", "fall", "all"}, counts


def test_object_events_of_a_live_pipeline_carry_the_zone_fields(tiny_model: Path, small_video: Path) -> None:
    # The tiny model sees one person at the frame's centre: on 160x120 a box whose bottom-centre is at about
    # (80, 80), inside `centre` and outside `corner`.
    cam = {
        "name": "cam", "source": str(small_video), "loop": True, "realtime": True, "fps": 25,
        "zones": [{"name": "centre", "polygon": [[0.3, 0.4], [0.7, 0.4], [0.7, 0.95], [0.3, 0.95]], "inertia": 2},
                  {"name": "corner", "polygon": [[0, 0], [0.2, 0], [0.2, 0.2]]}],
    }  # fmt: skip
    cfg = VigilConfig.model_validate({
        "cameras": [cam], "model": {"path": str(tiny_model), "threads": 1},
        "output": {"json_lines": False, "status_interval_s": 0},
        "tracking": {"min_hits": 1, "stationary_after_s": 1.0},
    })  # fmt: skip
    log = EventLog()
    pipe = LivePipeline(cfg, [log])

    def zoned() -> list[ObjectEvent]:
        with log.lock:
            return [e for e in log.events if e.obj["current_zones"] == ["centre"]]

    def driver() -> None:
        assert wait_until(lambda: len(zoned()) >= 1, 90), [e.obj for e in log.events]
        assert wait_until(lambda: any(e.obj["stationary"] for e in zoned()), 60)
        counts = {}
        assert wait_until(lambda: counts.update(pipe.zone_counts("cam")) or counts["centre"]["all"] == 1, 30)
        assert counts["corner"]["all"] == 0 and counts["centre"]["person"] == 1

    run_driven(pipe, driver)
    first = zoned()[0]
    assert first.type in ("new", "update") and first.obj["entered_zones"] == ["centre"]
    assert any(e.reason == "zones changed" or e.type == "new" for e in zoned())
    still = next(e for e in zoned() if e.obj["stationary"])
    assert still.type == "update" and "stationary" in still.reason


def test_a_reload_applies_zones_live_and_rejects_an_unknown_label(
    tmp_path: Path, tiny_model: Path, small_video: Path
) -> None:
    from test_reload import ConfigFile, reload

    cam = {"name": "cam", "source": str(small_video), "loop": True, "realtime": True, "fps": 25}
    file = ConfigFile(tmp_path / "vigil.yaml", {
        "cameras": [cam], "model": {"path": str(tiny_model), "threads": 1, "warmup_runs": 0},
        "output": {"json_lines": False, "status_interval_s": 0}, "tracking": {"min_hits": 1},
    })  # fmt: skip
    log = EventLog()
    pipe = LivePipeline(file.source().load(), [log], config_source=file.source())
    answers: dict[str, dict] = {}

    def driver() -> None:
        assert wait_until(lambda: len(log.events) >= 1, 90)
        assert pipe.zone_counts("cam") == {}
        cam["zones"] = [{"name": "centre", "polygon": [[0.3, 0.4], [0.7, 0.4], [0.7, 0.95], [0.3, 0.95]]}]
        file.write()
        answers["zones"] = reload(pipe)
        assert wait_until(lambda: any(e.obj["current_zones"] == ["centre"] for e in log.events), 60)
        cam["filters"] = {"persn": {"min_score": 0.5}}
        file.write()
        answers["bad"] = reload(pipe)

    run_driven(pipe, driver)
    assert answers["zones"]["status"] == "applied", answers
    assert answers["bad"]["status"] == "rejected"
    assert answers["bad"]["error"].startswith(f"{file.path}: cameras.0.filters.persn: 'persn' is not a label of")
    (changed,) = [e for e in log.events if e.obj["current_zones"] == ["centre"] and e.reason == "zones changed"]
    assert changed.obj["entered_zones"] == ["centre"]
