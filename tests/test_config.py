from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from app.config import ConfigError, dump_config, load_config

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
    assert [(a.label, a.min_duration_s) for a in cfg.mqtt.alerts] == [("Fall", 2.0)]


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
        ("cameras: [{name: a, source: x}, {name: a, source: y}]", "used twice"),
        ("cameras: [{name: 'a/b', source: x}]", "cameras.0.name:"),
        ("cameras: [{name: a, source: x}]\nmodel: {backend: cuda}", "model.backend:"),
        ("cameras: [{name: a, source: x}]\nextra_top: 1", "extra_top: unknown key"),
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
