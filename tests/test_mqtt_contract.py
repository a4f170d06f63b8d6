"""Pure parts of the MQTT contract: topic names, command parsing, envelope, discovery payloads."""

from __future__ import annotations

import json

from app.config import ZoneConfig
from app.envelope import envelope
from app.mqtt.discovery import discovery_messages
from app.mqtt.tail import render
from app.mqtt.topics import Topics, topic_safe
from app.mqtt.zones import ZoneCountTopics


def test_topics_and_command_parsing() -> None:
    t = Topics("vigil/dev")
    assert t.status == "vigil/dev/status" and t.stats == "vigil/dev/stats"
    assert t.detections("door") == "vigil/dev/door/detections"
    assert t.count("door", "Fall") == "vigil/dev/door/fall/count"
    assert t.count("door", "all") == "vigil/dev/door/all/count"
    assert t.parse_command("vigil/dev/door/detect/set") == ("door", "detect")
    assert t.parse_command("vigil/dev/door/confidence/set") == ("door", "confidence")
    for bad in (
        "vigil/dev/door/detect/state",
        "other/dev/door/detect/set",
        "vigil/dev/detect/set",
        "vigil/dev/a/b/c/set",
    ):
        assert t.parse_command(bad) is None
    assert t.command_subscriptions() == ["vigil/dev/+/detect/set", "vigil/dev/+/confidence/set",
                                         "vigil/dev/model/set", "vigil/dev/model/rollback"]  # fmt: skip
    assert t.model == "vigil/dev/model" and t.parse_command(t.model_set) is None
    assert topic_safe("person #1/+") == "person_1"


def test_envelope_fields() -> None:
    e = envelope("dev", "door", type="new")
    assert e["schema"] == 1 and e["device_id"] == "dev" and e["camera"] == "door" and e["type"] == "new"
    assert e["published_at"].endswith("Z") and len(e["published_at"]) == 24


def test_discovery_payloads() -> None:
    msgs = dict(discovery_messages("homeassistant", "dev", Topics("vigil/dev"), ["door"], ["Normal", "Fall"], "m.onnx"))
    keys = set(msgs)
    assert "homeassistant/binary_sensor/dev/door_fall_detected/config" in keys
    assert "homeassistant/sensor/dev/door_normal_count/config" in keys
    assert "homeassistant/switch/dev/door_detection/config" in keys
    assert "homeassistant/sensor/dev/door_processed_fps/config" in keys
    uids = [m["unique_id"] for m in msgs.values()]
    assert len(uids) == len(set(uids)), "unique ids"
    for m in msgs.values():
        assert m["availability_topic"] == "vigil/dev/status" and m["device"]["model"] == "m.onnx"
    sw = msgs["homeassistant/switch/dev/door_detection/config"]
    assert sw["command_topic"] == "vigil/dev/door/detect/set" and sw["state_topic"] == "vigil/dev/door/detect/state"
    json.dumps(msgs)  # serialisable


def test_zone_discovery_payloads() -> None:
    zones = {"door": [("porch", ["person", "Big Car"]), ("path", [])]}
    msgs = dict(discovery_messages("homeassistant", "dev", Topics("vigil/dev"), ["door", "yard"], ["person"], "m.onnx",
                                   zones))  # fmt: skip
    occupied = msgs["homeassistant/binary_sensor/dev/door_zone_porch_occupied/config"]
    assert occupied["state_topic"] == "vigil/dev/door/zone/porch/all/count"
    assert occupied["device_class"] == "occupancy" and "> 0" in occupied["value_template"]
    assert occupied["availability_topic"] == "vigil/dev/status" and occupied["device"]["identifiers"] == ["vigil_dev"]
    car = msgs["homeassistant/sensor/dev/door_zone_porch_big_car_count/config"]
    assert car["state_topic"] == "vigil/dev/door/zone/porch/big_car/count" and car["unit_of_measurement"] == "objects"
    assert msgs["homeassistant/sensor/dev/door_zone_path_all_count/config"]["state_topic"].endswith("path/all/count")
    zone_keys = sorted(k for k in msgs if "_zone_" in k)
    # porch: occupied + all + 2 labels; path (no labels): occupied + all; yard has no zones
    assert len(zone_keys) == 6 and not any("yard_zone" in k for k in zone_keys)
    uids = [m["unique_id"] for m in msgs.values()]
    assert len(uids) == len(set(uids))
    json.dumps(msgs)


def test_zone_count_topics_publish_changes_only() -> None:
    t = Topics("vigil/dev")
    assert t.zone_count("door", "porch", "Big Car") == "vigil/dev/door/zone/porch/big_car/count"
    assert t.zone_count("door", "porch", "all") == "vigil/dev/door/zone/porch/all/count"
    square = [[0, 0], [1, 0], [1, 1], [0, 1]]
    zones = [ZoneConfig(name="porch", polygon=square, labels=["person"]), ZoneConfig(name="path", polygon=square)]
    zc = ZoneCountTopics(t)
    z = "vigil/dev/door/zone/"
    assert zc.changes("door", zones, {}) == [(z + "porch/all/count", "0"), (z + "porch/person/count", "0"),
                                             (z + "path/all/count", "0")]  # fmt: skip
    assert zc.changes("door", zones, {}) == [], "unchanged: nothing"
    counts = {"porch": {"person": 2, "all": 2}, "path": {"car": 1, "all": 1}, "elsewhere": {"all": 5}}
    assert zc.changes("door", zones, counts) == [(z + "porch/all/count", "2"), (z + "porch/person/count", "2"),
                                                 (z + "path/all/count", "1"), (z + "path/car/count", "1")]  # fmt: skip
    assert zc.changes("door", zones, {"porch": {"person": 2, "all": 2}}) == [
        (z + "path/all/count", "0"), (z + "path/car/count", "0")], "a label gone goes back to 0"  # fmt: skip
    assert len(zc.changes("door", zones, {"porch": {"person": 2, "all": 2}}, force=True)) == 4
    assert zc.changes("door", zones[:1], {}) == [(z + "porch/all/count", "0"), (z + "porch/person/count", "0")]
    # a zone without labels counted by a model of 80: `all` and the labels counted in it, not 80 zeros
    fresh = ZoneCountTopics(t)
    every = {"path": {"all": 0, **{f"label{i}": 0 for i in range(80)}}}
    assert fresh.changes("door", zones[1:], every) == [(z + "path/all/count", "0")]


def test_tail_rendering() -> None:
    ev = json.dumps({"type": "new", "object": {"id": 3, "label": "Fall", "confidence": 0.9, "box": [1, 2, 3, 4]}})
    assert "NEW    #3 Fall conf 0.9" in render("vigil/dev/door/events", ev.encode(), False)
    assert "<JPEG 5 bytes>" in render("x/snapshot", b"\xff\xd8\xff\x00\x01", True)
    assert "(retained)" in render("x/status", b"online", True)
