"""The recent-events store and `/api/events`: one entry per tracked object, bounded, filtered, with snapshots.

The store is driven by real object events (the tracking stage's `TrackedObject.as_dict`, with the zone fields
the zones stage adds), the snapshots by a real frame ring through a real (not started) pipeline's fan-out, and
the endpoints by a real HTTP client against a running pipeline (real worker, tiny model, real clip).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import wait_until
from support.web_harness import Served, web_config
from test_http_api import http

from app.config import VigilConfig
from app.events.store import EventStore
from app.pipeline.live import LivePipeline
from app.ring import FrameRing
from app.tracking.objects import ObjectEvent, TrackedObject
from app.types import Detections, FrameMeta, FrameResult, StageTimings

TOKEN = "events-token-0123456789abcdef"


def obj_event(kind: str, tid: int, label: str = "person", conf: float = 0.8, t: float = 1_800_000_000.0,
              zones: tuple[str, ...] = (), entered: tuple[str, ...] = ()) -> ObjectEvent:  # fmt: skip
    o = TrackedObject(tid, label, 0, conf, conf, [10.0, 20.0, 50.0, 100.0], 0.0, 1.0, t, t + 1)
    d = o.as_dict((160, 120))
    d.update(current_zones=list(zones), entered_zones=list(entered or zones), stationary=False)
    return ObjectEvent(kind, d)  # type: ignore[arg-type]


def test_one_entry_per_object_through_its_lifecycle() -> None:
    store = EventStore(10)
    store.on_event("door", obj_event("new", 3, conf=0.6))
    store.on_event("door", obj_event("update", 3, conf=0.9, zones=("porch",)))
    store.on_event("door", obj_event("alert", 3, conf=0.7, zones=("porch", "path"), entered=("porch", "path")))
    assert len(store) == 1 and store.active("door", 3) is not None
    store.on_event("door", obj_event("end", 3, conf=0.7, zones=(), entered=("porch", "path")))
    [entry] = store.query()
    assert entry["last_event"] == "end" and entry["end_time"] and entry["end_time"].endswith("Z")
    assert entry["camera"] == "door" and entry["track_id"] == 3 and entry["label"] == "person"
    assert entry["top_score"] == 0.9 and entry["score"] == 0.7
    assert entry["current_zones"] == [] and entry["entered_zones"] == ["porch", "path"]
    assert entry["has_snapshot"] is False and entry["snapshot_url"] is None
    assert entry["box"] == [10.0, 20.0, 50.0, 100.0] and len(entry["box_normalized"]) == 4
    assert set(entry) == {"id", "camera", "label", "track_id", "start_time", "end_time", "top_score", "score",
                          "current_zones", "entered_zones", "stationary", "box", "box_normalized", "has_snapshot",
                          "snapshot_url", "last_event"}  # fmt: skip
    assert store.active("door", 3) is None, "ended: a later object with the same id gets a new entry"
    store.on_event("door", obj_event("new", 3))
    assert len(store) == 2 and len({e["id"] for e in store.query()}) == 2
    json.dumps(store.query())


def test_bounded_newest_first_and_filtered() -> None:
    store = EventStore(4)
    for tid, (cam, label, zones) in enumerate([("a", "person", ("yard",)), ("b", "car", ()), ("a", "car", ("drive",)),
                                               ("b", "person", ("yard",)), ("a", "person", ())], 1):  # fmt: skip
        store.on_event(cam, obj_event("new", tid, label, zones=zones))
    entries = store.query()
    assert [e["track_id"] for e in entries] == [5, 4, 3, 2], "the oldest went; newest first"
    assert [e["track_id"] for e in store.query(camera="a")] == [5, 3]
    assert [e["track_id"] for e in store.query(label="person")] == [5, 4]
    assert [e["track_id"] for e in store.query(zone="yard")] == [4]
    assert [e["track_id"] for e in store.query(camera="b", label="car")] == [2]
    assert [e["track_id"] for e in store.query(limit=2)] == [5, 4]
    assert store.active("a", 1) is None, "a dropped entry is no longer updated"
    store.on_event("a", obj_event("update", 5, conf=0.95))
    assert len(store) == 4 and store.query(limit=1)[0]["score"] == 0.95
    store.trim(2)
    assert [e["track_id"] for e in store.query()] == [5, 4]
    assert all("/" not in e["id"] and "?" not in e["id"] for e in entries), "ids are URL-safe"


def test_snapshot_bytes_are_bounded_the_oldest_entries_lose_theirs_first() -> None:
    """`events.snapshot_max_mb`: 4K snapshots at quality 100 are ~1-2 MB each; 500 of them must not all stay."""
    store = EventStore(10, max_snapshot_bytes=2500)
    ids = [store.on_event("door", obj_event("new", tid)).id for tid in range(1, 5)]
    for entry_id in ids:
        assert store.set_snapshot(entry_id, bytes(1000))
    assert [e["has_snapshot"] for e in store.query()] == [True, True, False, False], "newest first: 2 fit"
    stats = store.stats()
    assert stats["snapshot_bytes"] == 2000 and stats["snapshots"] == 2 and stats["snapshots_evicted"] == 2
    assert store.set_snapshot(ids[2], bytes(1600)), "an older entry's better frame is kept; others make room"
    assert [e["has_snapshot"] for e in store.query()] == [False, True, False, False]
    assert store.stats()["snapshot_bytes"] == 1600
    assert not store.set_snapshot(ids[0], bytes(2600)), "a JPEG over the whole bound is not kept"
    assert not store.set_snapshot("gone", bytes(10))
    entry = store.get(ids[0])
    assert entry is not None and not store.set_snapshot(ids[0], bytes(10), number=entry.number + 99), (
        "a render for an older entry of the same id is not kept"
    )
    store.trim(1)
    assert store.stats() == {"stored": 1, "active": 1, "snapshots": 0, "snapshot_bytes": 0, "snapshots_evicted": 3}
    store.set_snapshot(ids[3], bytes(1000))
    store.trim(1, max_snapshot_bytes=500)
    assert store.stats()["snapshot_bytes"] == 0, "a lower bound applies at once (config reload)"


def _frame(ring: FrameRing, shade: int) -> FrameMeta:
    image = np.full((240, 320, 3), shade, np.uint8)
    return ring.write(image, index=0, pts=0.0, captured_mono_ns=time.monotonic_ns(), captured_wall=time.time())


def test_snapshot_is_taken_at_new_and_replaced_by_a_better_frame(tmp_path: Path, small_video: Path) -> None:
    """Real tracking stage and event store behind a (not started) pipeline's fan-out, frames in a real ring."""
    cfg = VigilConfig.model_validate({
        "state_dir": str(tmp_path), "cameras": [{"name": "cam", "source": str(small_video)}],
        "tracking": {"min_hits": 2}, "events": {"snapshot_max_width": 160, "snapshot_quality": 90},
    })  # fmt: skip
    pipe = LivePipeline(cfg, [])
    pipe.events.snapshot_interval_s = 0.0  # every better frame replaces it (the default bounds it to 1/s)
    ring = FrameRing.create(4, 240, 320)
    pipe.rings["cam"] = ring
    box = np.array([[100, 60, 180, 200]], np.float32)

    def result(meta: FrameMeta, conf: float) -> None:
        det = Detections(box, np.array([conf], np.float32), np.array([0], np.int32))
        now = time.monotonic_ns()
        pipe.fanout.result(FrameResult("cam", meta, det, StageTimings(1, 1, 1), now, now, 1), now, 0)

    def snapshot_shade() -> float | None:
        [entry] = pipe.recent_events()
        jpeg = pipe.event_snapshot(entry["id"])
        if jpeg is None:
            return None
        img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert img.shape == (120, 160, 3), "scaled to events.snapshot_max_width"
        return float(np.median(img[:, :40]))  # left of the box: the frame's own shade

    async def main() -> None:
        await pipe.events.start(pipe)
        pipe.fanout.model_ready({0: "person"})
        result(_frame(ring, 30), 0.5)
        result(_frame(ring, 60), 0.6)  # second sighting: `new`, snapshot of this frame
        for _ in range(500):
            if snapshot_shade() is not None:
                break
            await asyncio.sleep(0.02)
        assert snapshot_shade() == pytest.approx(60, abs=4)
        result(_frame(ring, 90), 0.55)  # worse: kept
        result(_frame(ring, 150), 0.95)  # better: replaces it
        for _ in range(500):
            if snapshot_shade() == pytest.approx(150, abs=4):
                break
            await asyncio.sleep(0.02)
        await pipe.events.stop()

    try:
        asyncio.run(main())
        [entry] = pipe.recent_events()
        assert snapshot_shade() == pytest.approx(150, abs=4), "the best frame's snapshot"
        assert entry["has_snapshot"] and entry["snapshot_url"] == f"/api/events/{entry['id']}/snapshot.jpg"
        assert entry["top_score"] == pytest.approx(0.95) and entry["last_event"] == "new"
        assert pipe.events.stats_sections()["events"]["snapshots"] == 1
    finally:
        ring.close()
        ring.unlink()


@pytest.fixture(scope="module")
def guarded(tiny_model: Path, small_video: Path, tmp_path_factory: pytest.TempPathFactory):
    token_file = tmp_path_factory.mktemp("secrets") / "token"
    token_file.write_text(TOKEN + "\n")
    cfg = web_config(tiny_model, small_video, require_token=True, token_file=str(token_file))
    cfg.events.snapshot_max_width = 64
    with Served(cfg) as s:
        yield s


def api(s: Served, path: str, token: str | None = TOKEN):
    return http(f"{s.url}{path}", headers={"Authorization": f"Bearer {token}"} if token else {})


def test_events_endpoints(guarded: Served) -> None:
    def first() -> dict | None:
        status, _, body = api(guarded, "/api/events")
        events = json.loads(body)["events"] if status == 200 else []
        return events[0] if events and events[0]["has_snapshot"] else None

    assert wait_until(lambda: first() is not None, timeout=60), "the tiny model's person becomes an event"
    entry = first()
    assert entry is not None
    assert entry["camera"] == "cam" and entry["label"] == "person" and entry["last_event"] in ("new", "update", "alert")
    assert entry["end_time"] is None and entry["top_score"] == pytest.approx(0.9, abs=0.01)
    status, headers, body = api(guarded, entry["snapshot_url"])
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    img = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None and img.shape == (48, 64, 3), "160x120 frame scaled to events.snapshot_max_width 64"

    for query, n in (("?camera=cam", 1), ("?camera=cam&label=person&limit=1", 1), ("?label=fall", 0),
                     ("?zone=nowhere", 0), ("?limit=500", 1)):  # fmt: skip
        status, headers, body = api(guarded, f"/api/events{query}")
        assert status == 200 and len(json.loads(body)["events"]) == n, query
    for query, code in (("?limit=0", 400), ("?limit=abc", 400), ("?limit=501", 400), ("?limit=-1", 400),
                        ("?camera=nope", 404)):  # fmt: skip
        status, headers, body = api(guarded, f"/api/events{query}")
        err = json.loads(body)
        assert status == code and err["status"] == code and err["error"], query
        assert ("limit" in err["error"]) == (code == 400)
    for path in ("/api/events/nope/snapshot.jpg", "/api/events/..%2F..%2Fetc/snapshot.jpg"):
        status, headers, body = api(guarded, path)
        assert status == 404 and json.loads(body)["status"] == 404
    for path in ("/api/events", entry["snapshot_url"]):
        status, headers, _ = api(guarded, path, token=None)
        assert status == 401 and "Bearer" in headers["WWW-Authenticate"]
