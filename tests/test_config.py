from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from app.config import ConfigError, VigilConfig, dump_config, load_config

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_default_config_is_valid() -> None:
    cfg = load_config(REPO / "configs" / "default.yaml")
    assert cfg.cameras[0].loop and cfg.cameras[0].realtime
    assert cfg.model.conf == 0.25 and cfg.model.iou == 0.7
    assert cfg.model.path == "engines/yolov3-tiny-coco.onnx" and cfg.model.imgsz == 416
    assert cfg.model.classes == ["person", "bicycle", "car", "motorcycle", "bus", "truck", "cat", "dog"]


def test_fall_profile_is_valid() -> None:
    cfg = load_config(REPO / "configs" / "fall.yaml")
    assert cfg.model.path == "engines/fall-detection-yolov8s.onnx" and cfg.model.classes is None
    assert [(a.label, a.min_duration_s) for a in cfg.tracking.alerts] == [("Fall", 2.0)]


def test_minimal_config_fills_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "cameras: [{name: a, source: x.mp4}]"))
    assert cfg.device_id == "vigil" and cfg.cameras[0].ring_slots == 4 and cfg.model.backend == "auto"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("cameras: [{name: a, source: x.mp4, bogus: 1}]", "cameras.0.bogus: unknown key"),
        ("cameras: [{name: a, source: x.mp4}]\nmodel: {conf: high}", "model.conf:"),
        (
            "cameras: [{name: a, source: x.mp4}]\nmodel: {conf: 1.5}",
            "model.conf: Input should be less than or equal to 1",
        ),
        ("cameras: [{name: a}]", "cameras.0.source: required key is missing"),
        ("cameras: []", "cameras:"),
        ("device_id: 'a b'\ncameras: [{name: a, source: x}]", "device_id:"),
        ("cameras: [{name: a, source: x}, {name: a, source: y}]", "cameras.1.name: camera name 'a' is used twice"),
        (
            "cameras: [{name: a, source: x}]\ntracking: {alerts: [{label: person, zones: [yard]}]}",
            "tracking.alerts.0.zones: yard is not a zone of any camera",
        ),
        (
            "cameras: [{name: a, source: x}]\ntracking: {alerts: [{label: person, zones: []}]}",
            "tracking.alerts.0.zones: an empty list matches nothing",
        ),
        ("cameras: [{name: a, source: x}]\nwebhooks: [{url: 'http://h/x', labels: []}]", "webhooks.0.labels: an empty"),
        ("cameras: [{name: a, source: x}]\nwebhooks: [{url: 'http://h/x', cameras: [b]}]", "webhooks.0.cameras: b is"),
        ("cameras: [{name: a, source: x}]\nhttp: {tls_cert_file: c.pem}", "http: tls_cert_file and tls_key_file"),
        ("cameras: [{name: 'a/b', source: x}]", "cameras.0.name:"),
        ("cameras: [{name: a, source: x}]\nmodel: {backend: cuda}", "model.backend:"),
        ("cameras: [{name: a, source: x}]\nextra_top: 1", "extra_top: unknown key"),
        (
            "cameras: [{name: a, source: x, filters: {person: }}]",
            "cameras.0.filters.person: should be a mapping of keys (key: value lines), got nothing",
        ),
        ("cameras: [{name: a, source: x, detect: 5}]", "cameras.0.detect: should be a mapping of keys (key: value"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, text))
    assert needle in str(exc.value)


def test_invalid_yaml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(write(tmp_path, "cameras: [\n"))
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- 1\n- 2\n"))


def test_overrides(tmp_path: Path) -> None:
    base = write(tmp_path, "cameras: [{name: a, source: x.mp4}]")
    cfg = load_config(
        base,
        [
            "cameras.0.source=clip.mp4",
            "model.conf=0.5",
            "cameras.1.name=b",
            "cameras.1.source=2",
            "model.classes=[0]",
        ],
    )
    assert cfg.cameras[0].source == "clip.mp4"
    assert cfg.model.conf == 0.5 and cfg.model.classes == [0]
    assert cfg.cameras[1].name == "b" and cfg.cameras[1].source == 2
    with pytest.raises(ConfigError, match=r"expected dotted\.key=value"):
        load_config(base, ["model.conf"])
    with pytest.raises(ConfigError, match="index out of range"):
        load_config(base, ["cameras.5.name=z"])
    with pytest.raises(ConfigError, match=r"model\.conf:"):
        load_config(base, ["model.conf=abc"])


def test_dump_round_trips(tmp_path: Path) -> None:
    cfg = load_config(REPO / "configs" / "default.yaml")
    again = load_config(write(tmp_path, dump_config(cfg)))
    assert again == cfg
    assert yaml.safe_load(dump_config(cfg))["cameras"][0]["name"] == "street"


def test_tracking_keys(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "cameras: [{name: a, source: x.mp4}]"))
    t = cfg.tracking
    assert (t.tracker, t.min_hits, t.track_lost_s, t.event_update_interval_s, t.alerts, t.snapshot) == (
        "iou",
        2,
        2.0,
        5.0,
        [],
        True,
    )
    text = """
cameras: [{name: a, source: x.mp4}]
tracking:
  tracker: iou
  min_hits: 3
  track_lost_s: 4
  event_update_interval_s: 10
  alerts: [{label: person, min_confidence: 0.6, min_duration_s: 2}]
  snapshot: false
"""
    t = load_config(write(tmp_path, text)).tracking
    assert (t.min_hits, t.track_lost_s, t.event_update_interval_s, t.snapshot) == (3, 4.0, 10.0, False)
    assert [(a.label, a.min_confidence) for a in t.alerts] == [("person", 0.6)]
    with pytest.raises(ConfigError, match=r"tracking\.min_hits: Input should be greater than or equal to 1"):
        load_config(write(tmp_path, "cameras: [{name: a, source: x.mp4}]\ntracking: {min_hits: 0}"))


def test_tracking_keys_under_mqtt_still_work_with_a_deprecation_warning(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="app.config")
    text = "cameras: [{name: a, source: x.mp4}]\nmqtt: {enabled: true, min_hits: 3, alerts: [{label: Fall}]}"
    with pytest.warns(DeprecationWarning) as warned:
        cfg = load_config(write(tmp_path, text))
    assert [str(w.message) for w in warned] == [
        "mqtt.min_hits is deprecated: use tracking.min_hits",
        "mqtt.alerts is deprecated: use tracking.alerts",
    ]
    assert cfg.tracking.min_hits == 3 and [a.label for a in cfg.tracking.alerts] == ["Fall"] and cfg.mqtt.enabled
    logged = [r.getMessage() for r in caplog.records if r.name == "app.config"]
    assert "config: mqtt.min_hits is deprecated: use tracking.min_hits" in logged
    assert "config: mqtt.alerts is deprecated: use tracking.alerts" in logged
    assert "min_hits" not in dump_config(cfg).split("tracking:")[0], "dumped under tracking only"
    data = {"cameras": [{"name": "a", "source": "x.mp4"}], "mqtt": {"min_hits": 3}}
    with pytest.warns(DeprecationWarning):
        assert VigilConfig.model_validate(data).tracking.min_hits == 3
    assert data["mqtt"] == {"min_hits": 3} and "tracking" not in data, "the caller's data is left as it was"
    with pytest.warns(DeprecationWarning) as warned:
        # --set overrides are applied before validation, so the old spelling works there too
        cfg = load_config(
            write(tmp_path, "cameras: [{name: a, source: x.mp4}]"), ["mqtt.tracker=iou", "mqtt.snapshot=false"]
        )
    assert cfg.tracking.snapshot is False
    assert [str(w.message) for w in warned] == [
        "mqtt.tracker is deprecated: use tracking.tracker",
        "mqtt.snapshot is deprecated: use tracking.snapshot",
    ]


def test_tracking_key_set_both_ways_to_different_values_is_an_error(tmp_path: Path) -> None:
    base = write(tmp_path, "cameras: [{name: a, source: x.mp4}]\ntracking: {min_hits: 3}")
    with pytest.raises(ConfigError, match=r"mqtt\.min_hits and tracking\.min_hits are both set, to different values"):
        load_config(base, ["mqtt.min_hits=4"])
    with pytest.warns(DeprecationWarning):  # the same value both ways is only deprecated
        assert load_config(base, ["mqtt.min_hits=3"]).tracking.min_hits == 3
