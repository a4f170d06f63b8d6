"""The MQTT contract end to end: real pipeline (small ONNX model, real video), real mosquitto, real
subscriber. The tiny model always sees one 'person' in the middle of the frame at 0.9."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import REPO, wait_until
from support.broker import Broker, Subscriber

from app.config import VigilConfig
from app.mqtt.service import MqttService
from app.pipeline.live import LivePipeline

BASE = "vigil/dev"


def vigil_config(model: Path, video: Path, port: int, *, tracking_under_mqtt: bool = False, **mqtt) -> VigilConfig:
    """The test config; `tracking_under_mqtt` spells the tracking keys the deprecated way (`mqtt.min_hits`)."""
    m = {
        "enabled": True, "port": port, "stats_interval_s": 1, "detections_max_rate_hz": 5,
        "reconnect_min_s": 0.5, "reconnect_max_s": 1,
    }  # fmt: skip
    tracking = {
        "min_hits": 2, "event_update_interval_s": 2,
        "alerts": [{"label": "person", "min_confidence": 0.5, "min_duration_s": 0.5}],
    }  # fmt: skip
    if tracking_under_mqtt:
        m, tracking = {**m, **tracking}, {}
    m.update(mqtt)
    return VigilConfig.model_validate(
        {
            "device_id": "dev",
            "cameras": [{"name": "cam", "source": str(video), "loop": True, "realtime": True, "fps": 25}],
            "model": {"path": str(model), "threads": 1},
            "output": {"json_lines": False, "status_interval_s": 0},
            "mqtt": m,
            "tracking": tracking,
        }
    )


ZONES = [
    {"name": "yard", "polygon": [[0, 0], [1, 0], [1, 1], [0, 1]], "labels": ["person"]},
    {"name": "corner", "polygon": [[0, 0], [0.2, 0], [0.2, 0.2], [0, 0.2]]},
]
HA_ZONE = "homeassistant/binary_sensor/dev/cam_zone"


def with_zones(cfg: VigilConfig, zones: list[dict]) -> VigilConfig:
    data = cfg.model_dump()
    data["cameras"][0]["zones"] = zones
    return VigilConfig.model_validate(data)


def payloads(sub: Subscriber, topic: str) -> list[dict]:
    return [json.loads(m.payload) for m in sub.on(topic)]


def test_topic_contract_commands_and_discovery(tiny_model: Path, small_video: Path, broker: Broker) -> None:
    sub = Subscriber(broker, "#")
    # The deprecated spelling (`mqtt.min_hits`, `mqtt.alerts`, ...) still drives the whole contract below.
    with pytest.warns(DeprecationWarning, match="use tracking"):
        cfg = vigil_config(tiny_model, small_video, broker.port, tracking_under_mqtt=True)
    cfg = with_zones(cfg, ZONES)
    mqtt = MqttService(cfg)
    pipe = LivePipeline(cfg, [mqtt], duration_s=30)
    marks: dict[str, float] = {}

    def driver() -> None:
        sub.wait_for(lambda m: m.topic == f"{BASE}/cam/events" and json.loads(m.payload)["type"] == "alert")
        sub.wait_for(lambda m: m.topic == f"{BASE}/stats")
        pub = sub.client.publish
        for bad_topic, bad in ((f"{BASE}/cam/detect/set", b"maybe"), (f"{BASE}/cam/confidence/set", b"abc"),
                               (f"{BASE}/cam/confidence/set", b"7"), (f"{BASE}/nocam/detect/set", b"ON")):  # fmt: skip
            pub(bad_topic, bad, qos=1)
        pub(f"{BASE}/cam/confidence/set", b"0.6", qos=1)
        sub.wait_for(lambda m: m.topic == f"{BASE}/cam/confidence/state" and m.payload == b"0.6")
        pub(f"{BASE}/cam/detect/set", b"off", qos=1)
        sub.wait_for(lambda m: m.topic == f"{BASE}/cam/detect/state" and m.payload == b"OFF")
        marks["off"] = time.time()
        time.sleep(2.0)
        marks["on"] = time.time()
        pub(f"{BASE}/cam/detect/set", b"ON", qos=1)
        sub.wait_for(lambda m: m.topic == f"{BASE}/cam/detect/state" and m.payload == b"ON")
        sub.wait_for(lambda m: m.topic == f"{BASE}/cam/person/count" and m.payload == b"1")
        # A reload that changes the zones re-announces discovery: the new zone appears, the removed one is cleared.
        reloaded = with_zones(cfg, [ZONES[0], {"name": "porch", "polygon": [[0, 0.5], [1, 0.5], [1, 1], [0, 1]]}])
        asyncio.run_coroutine_threadsafe(mqtt.apply_config(reloaded, frozenset({"cameras"})), pipe._loop).result(10)
        sub.wait_for(lambda m: m.topic == f"{HA_ZONE}_porch_occupied/config" and m.payload)
        sub.wait_for(lambda m: m.topic == f"{HA_ZONE}_corner_occupied/config" and m.payload == b"")
        pipe._loop.call_soon_threadsafe(pipe.request_stop, "test done")

    t = threading.Thread(target=driver, daemon=True)
    t.start()
    asyncio.run(pipe.run())
    t.join(5)
    time.sleep(0.5)

    status = [m.payload for m in sub.on(f"{BASE}/status")]
    assert status[0] == b"online" and status[-1] == b"offline"

    dets = payloads(sub, f"{BASE}/cam/detections")
    d = dets[0]
    assert d["schema"] == 1 and d["device_id"] == "dev" and d["camera"] == "cam"
    assert d["captured_at"].endswith("Z") and d["published_at"].endswith("Z")
    assert {"inference", "frame_age"} <= d["latency_ms"].keys()
    box = d["detections"][0]
    assert box["label"] == "person" and box["track_id"] >= 1 and len(box["box_normalized"]) == 4
    assert all(0 <= v <= 1 for v in box["box_normalized"])
    # rate limit: 5 messages/s at most (25 fps camera, fast detector)
    per_second: dict[int, int] = {}
    for msg in dets:
        sec = int(time.mktime(time.strptime(msg["published_at"][:19], "%Y-%m-%dT%H:%M:%S")))
        per_second[sec] = per_second.get(sec, 0) + 1
    assert max(per_second.values()) <= 6
    # detection OFF: nothing published between the OFF echo and ON
    off_window = [m for m in dets if marks["off"] + 0.5 < _ts(m["published_at"]) < marks["on"]]
    assert off_window == []

    events = payloads(sub, f"{BASE}/cam/events")
    kinds = [e["type"] for e in events]
    assert kinds[0] == "new" and "alert" in kinds
    track = events[0]["object"]["id"]
    before_off = [e for e in events if _ts(e["published_at"]) < marks["off"]]
    assert all(e["object"]["id"] == track for e in before_off), "one object, one stable track id"
    ended = [e for e in events if e["type"] == "end"]
    assert ended and ended[0]["object"]["id"] == track and ended[0]["reason"] == "detection switched off"
    assert events[0]["object"]["label"] == "person" and events[0]["schema"] == 1
    assert {"first_seen", "last_seen", "best_confidence", "box", "box_normalized"} <= events[0]["object"].keys()
    assert kinds.count("update") <= 30 / 2 + 1, "updates are throttled"
    assert next(e for e in events if e["type"] == "alert")["alert"]["label"] == "person"

    counts = sub.on(f"{BASE}/cam/person/count")
    assert counts[-1].payload == b"1"
    assert sub.on(f"{BASE}/cam/all/count")[-1].payload == b"1"
    snap = sub.on(f"{BASE}/cam/snapshot")[-1]
    img = cv2.imdecode(np.frombuffer(snap.payload, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None and img.shape == (120, 160, 3)

    stats = payloads(sub, f"{BASE}/stats")[-1]
    cam = stats["cameras"]["cam"]
    assert cam["processed_fps"] > 0 and "p99" in cam["inference_ms"] and "p99" in cam["frame_age_ms"]
    assert stats["mqtt"]["connected"] and stats["worker"]["rss_mb"] > 0 and stats["uptime_s"] > 0
    assert stats["worker"]["model"] == str(tiny_model) and len(stats["worker"]["imgsz"]) == 2  # what serves
    assert stats["mqtt"]["rejected_commands"] >= 4 or mqtt.rejected_commands == 4

    # a subscriber arriving later gets the retained state: discovery, availability, counts, switches
    late = Subscriber(broker, "#")
    time.sleep(1.0)
    late.close()
    retained = {m.topic: m.payload for m in late.all if m.retain}
    disc = late.on("homeassistant/binary_sensor/dev/cam_person_detected/config")[0]
    assert disc.retain
    assert retained[f"{BASE}/status"] == b"offline" and retained[f"{BASE}/cam/detect/state"] == b"ON"
    assert retained[f"{BASE}/cam/person/count"] == b"1" and f"{BASE}/cam/snapshot" in retained
    cfg_ha = json.loads(disc.payload)
    assert cfg_ha["availability_topic"] == f"{BASE}/status" and cfg_ha["state_topic"] == f"{BASE}/cam/person/count"
    assert cfg_ha["device"]["identifiers"] == ["vigil_dev"]
    assert sub.on("homeassistant/switch/dev/cam_detection/config")
    assert sub.on("homeassistant/sensor/dev/cam_inference_ms/config")
    assert mqtt.rejected_commands == 4
    # zones: retained counts as the pipeline counts them, discovery of each zone's entities
    zone_counts = pipe.zone_counts("cam")
    for zone, label in (("yard", "all"), ("yard", "person"), ("porch", "all")):
        expected = str(zone_counts.get(zone, {}).get(label, 0)).encode()
        assert retained[f"{BASE}/cam/zone/{zone}/{label}/count"] == expected, (zone, label)
    assert sub.on(f"{BASE}/cam/zone/corner/all/count")[0].payload == b"0", "published while it was configured"
    occupied = json.loads(retained[f"{HA_ZONE}_yard_occupied/config"])
    assert occupied["state_topic"] == f"{BASE}/cam/zone/yard/all/count" and occupied["device_class"] == "occupancy"
    assert occupied["availability_topic"] == f"{BASE}/status"
    person = json.loads(retained["homeassistant/sensor/dev/cam_zone_yard_person_count/config"])
    assert person["state_topic"] == f"{BASE}/cam/zone/yard/person/count"
    assert f"{HA_ZONE}_corner_occupied/config" not in retained, "a removed zone's entity is cleared"
    sub.close()


def _ts(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def test_pipeline_runs_with_broker_down_and_connects_later(tiny_model: Path, small_video: Path, tmp_path: Path) -> None:
    b = Broker(tmp_path)
    cfg = vigil_config(tiny_model, small_video, b.port)
    mqtt = MqttService(cfg)
    pipe = LivePipeline(cfg, [mqtt], duration_s=30)
    seen: dict[str, object] = {}

    def driver() -> None:
        while not pipe.stats or pipe.stats["cam"].processed < 10:
            time.sleep(0.05)
        seen["processed_while_down"] = pipe.stats["cam"].processed
        b.start()
        sub = Subscriber(b, f"{BASE}/#")
        sub.wait_for(lambda m: m.topic == f"{BASE}/cam/detections")
        seen["status"] = sub.on(f"{BASE}/status")[-1].payload
        sub.close()
        pipe._loop.call_soon_threadsafe(pipe.request_stop, "test done")

    t = threading.Thread(target=driver, daemon=True)
    t.start()
    try:
        asyncio.run(pipe.run())
    finally:
        b.stop()
    t.join(5)
    assert seen["processed_while_down"] >= 10
    assert seen["status"] == b"online"


def test_vigil_run_with_mqtt_and_tail(tiny_model: Path, small_video: Path, broker: Broker) -> None:
    sets = ["--set", f"model.path={tiny_model}", "--set", f"cameras.0.source={small_video}", "--set",
            "mqtt.enabled=true", "--set", f"mqtt.port={broker.port}", "--set", "output.json_lines=false",
            "--set", "http.port=0"]  # fmt: skip
    run = subprocess.Popen([sys.executable, "-m", "app", "run", "--config", str(REPO / "configs/default.yaml"),
                            "--duration", "20", *sets], cwd=REPO, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        res = subprocess.run(
            [sys.executable, "-m", "app", "mqtt", "tail", "--config", str(REPO / "configs/default.yaml"),
             "--set", f"mqtt.port={broker.port}", "--count", "8", "--timeout", "60"],
            cwd=REPO, capture_output=True, text=True, timeout=90,
        )  # fmt: skip
    finally:
        run.terminate()
        run.wait(20)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) == 8
    assert "vigil/vigil-dev/status online" in res.stdout
    assert run.returncode == 0


def test_broker_restarts_mid_run_restore_online_discovery_and_commands(
    tiny_model: Path, small_video: Path, tmp_path: Path
) -> None:
    b = Broker(tmp_path).start()
    cfg = vigil_config(tiny_model, small_video, b.port)
    mqtt = MqttService(cfg)
    pipe = LivePipeline(cfg, [mqtt], duration_s=60)
    seen: dict[str, object] = {"rounds": 0}

    def driver() -> None:
        try:
            for _ in range(2):  # killed and restarted twice
                sub = Subscriber(b, "#")
                sub.wait_for(lambda m: m.topic == f"{BASE}/cam/detections")
                b.kill()
                sub.close()
                time.sleep(2.0)
                b.start()
                sub = Subscriber(b, "#")
                sub.wait_for(lambda m: m.topic == f"{BASE}/status" and m.payload == b"online")
                sub.wait_for(lambda m: m.topic.startswith("homeassistant/switch/dev/cam_detection"))
                # the command subscription is back: a command gets its retained echo
                sub.client.publish(f"{BASE}/cam/confidence/set", f"0.{5 + seen['rounds']}", qos=1)
                sub.wait_for(lambda m: m.topic == f"{BASE}/cam/confidence/state"
                             and m.payload == f"0.{5 + seen['rounds']}".encode())  # fmt: skip
                sub.close()
                seen["rounds"] += 1
        finally:
            pipe._loop.call_soon_threadsafe(pipe.request_stop, "test done")

    t = threading.Thread(target=driver, daemon=True)
    t.start()
    try:
        asyncio.run(pipe.run())
    finally:
        b.stop()
    t.join(5)
    assert seen["rounds"] == 2
    assert mqtt.link.stats.connects >= 3


def test_recycle_is_published_and_the_mqtt_session_survives_it(
    tiny_model: Path, small_video: Path, broker: Broker
) -> None:
    sub = Subscriber(broker, f"{BASE}/#")
    data = vigil_config(tiny_model, small_video, broker.port).model_dump()
    data["watchdog"]["recycle_every_h"] = 2 / 3600
    cfg = VigilConfig.model_validate(data)
    mqtt = MqttService(cfg)
    pipe = LivePipeline(cfg, [mqtt], duration_s=30)

    def driver() -> None:
        try:
            msg = sub.wait_for(lambda m: m.topic == f"{BASE}/cam/system", timeout=25)
            # The event announces the recycle; the switch follows once the standby has warmed up.
            assert wait_until(lambda: pipe.worker_recycles >= 1, timeout=20), "the recycle completes"
            before = len(sub.on(f"{BASE}/cam/detections"))
            assert wait_until(lambda: len(sub.on(f"{BASE}/cam/detections")) > before, timeout=10), "results go on"
            seen["system"] = json.loads(msg.payload)
            seen["session"] = (mqtt.link.stats.connects, mqtt.link.stats.disconnects)
        finally:
            pipe._loop.call_soon_threadsafe(pipe.request_stop, "test done")

    seen: dict = {}
    t = threading.Thread(target=driver, daemon=True)
    t.start()
    summary = asyncio.run(pipe.run())
    t.join(5)
    sub.close()
    assert seen["system"]["type"] == "recycle" and "periodic" in seen["system"]["reason"]
    assert seen["system"]["schema"] == 1 and seen["system"]["camera"] == "cam"
    assert summary.worker_recycles >= 1
    assert seen["session"] == (1, 0), "one MQTT session throughout the recycle"
