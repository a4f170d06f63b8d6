"""Prediction drift: the monitor's logic on synthetic results with explicit clocks, then end to end with real
worker processes on real video (derived from bikes.mp4 at test time), real mosquitto and the CLI."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import run_driven, wait_until
from support.cameras import every_frame

from app.config import VigilConfig
from app.monitoring.drift import DriftMonitor
from app.monitoring.drift_baseline import baseline_document, baseline_path, write_baseline
from app.pipeline.records import ResultRecord, SystemEvent
from app.types import Detections, FrameMeta, FrameResult, StageTimings

NAMES = {0: "person", 1: "car", 2: "kite"}
FPS = 10


def config(tmp_path: Path, **drift) -> VigilConfig:
    d = {"baseline_s": 60, "baseline_windows": 6, "window_s": 20, "min_frames": 50, "min_detections": 20, **drift}
    return VigilConfig.model_validate(
        {
            "cameras": [{"name": "cam", "source": "x.mp4"}],
            "model": {"path": "engines/model.onnx"},
            "state_dir": str(tmp_path / "state"),
            "monitoring": {"drift": d},
        }
    )


def record(t: float, class_ids: list[int], confidences: list[float], cam: str = "cam") -> ResultRecord:
    ns = int(t * 1e9)
    n = len(class_ids)
    det = Detections(np.zeros((n, 4), np.float32), np.asarray(confidences, np.float32), np.asarray(class_ids, np.int32))
    meta = FrameMeta(1, 1, t, ns, t, 480, 640)
    return ResultRecord(FrameResult(cam, meta, det, StageTimings(1, 5, 1), ns, ns, 1), NAMES, ns, 0)


Scene = Callable[[np.random.Generator], tuple[list[int], list[float]]]


def day(rng: np.random.Generator) -> tuple[list[int], list[float]]:
    """A busy street: ~3 detections a frame, 60% cars, confidences around 0.6."""
    n = int(rng.poisson(3.0))
    ids = [1 if rng.random() < 0.6 else 0 for _ in range(n)]
    return ids, np.clip(rng.normal(0.6, 0.15, n), 0.25, 1.0).tolist()


def night(rng: np.random.Generator) -> tuple[list[int], list[float]]:
    """A day model at night: almost nothing, and that unsure."""
    n = int(rng.poisson(0.2))
    return [0] * n, np.clip(rng.normal(0.3, 0.05, n), 0.25, 1.0).tolist()


def dirty_lens(rng: np.random.Generator) -> tuple[list[int], list[float]]:
    """Same scene, same counts, every confidence lower."""
    ids, conf = day(rng)
    return ids, np.clip(np.asarray(conf) - 0.2, 0.25, 1.0).tolist()


def wrong_model(rng: np.random.Generator) -> tuple[list[int], list[float]]:
    """A model that sees kites where the scene has cars."""
    ids, conf = day(rng)
    return [2 if i == 1 else i for i in ids], conf


class Clock:
    """Feeds results at FPS and ticks the monitor every 0.25 s, like the live pipeline."""

    def __init__(self, monitor: DriftMonitor, seed: int = 1) -> None:
        self.monitor = monitor
        self.t = 1000.0
        self.rng = np.random.default_rng(seed)
        self.events: list[SystemEvent] = []

    def run(self, scene: Scene, seconds: float) -> list[SystemEvent]:
        new: list[SystemEvent] = []
        for i in range(int(seconds * FPS)):
            ids, conf = scene(self.rng)
            self.monitor.observe(record(self.t, ids, conf), int(self.t * 1e9))
            self.t += 1 / FPS
            if i % (FPS // 4 or 1) == 0:
                new.extend(self.monitor.check(self.t))
        self.events.extend(new)
        return new


def payloads(sub, topic: str) -> list[dict]:
    return [json.loads(m.payload) for m in sub.on(topic)]


def by_metric(events: list[SystemEvent]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for e in events:
        out.setdefault(e.details["metric"], []).append(e.type)
    return out


def test_stable_scene_learns_then_watches_without_a_single_event(tmp_path: Path) -> None:
    monitor = DriftMonitor(config(tmp_path))
    clock = Clock(monitor)
    clock.run(day, 30)
    cam = monitor.stats_section()["cam"]
    assert cam["state"] == "learning" and cam["baseline"]["source"] is None
    assert 0.4 < cam["baseline"]["progress"] < 0.6
    clock.run(day, 600)
    assert clock.events == []
    cam = monitor.stats_section()["cam"]
    assert cam["state"] == "watching" and cam["baseline"]["source"] == "learned"
    assert cam["baseline"]["progress"] == 1.0 and abs(cam["baseline"]["frames"] - 600) <= 2
    metrics = cam["metrics"]
    assert {"detections_per_frame", "mean_confidence", "confidence_distance", "class_share:car"} <= set(metrics)
    assert "class_share:kite" not in metrics  # never seen: not a metric until it matters
    for name, m in metrics.items():
        assert m["z"] is not None and abs(m["z"]) <= 2 and m["alert"] is False, name
    assert abs(metrics["detections_per_frame"]["baseline"] - 3.0) < 0.3


def test_darkness_alerts_once_per_metric_then_recovers(tmp_path: Path) -> None:
    monitor = DriftMonitor(config(tmp_path))
    clock = Clock(monitor)
    clock.run(day, 120)
    drift = clock.run(night, 120)
    metrics = by_metric(drift)
    assert metrics["detections_per_frame"] == ["prediction_drift"], "one event for the state change, not one a tick"
    assert all(types == ["prediction_drift"] for types in metrics.values())
    event = next(e for e in drift if e.details["metric"] == "detections_per_frame")
    assert event.camera == "cam" and event.details["z"] < -2
    assert event.details["current"] < event.details["baseline"] and 2.5 < event.details["baseline"] < 3.5
    assert set(event.details) >= {"metric", "baseline", "current", "z"}
    assert monitor.stats_section()["cam"]["state"] == "drifting"
    now = monitor.stats_section()["cam"]["metrics"]["detections_per_frame"]
    assert now["alert"] is True and now["current"] < 0.5 and now["z"] < -2
    back = clock.run(day, 120)
    assert by_metric(back)["detections_per_frame"] == ["prediction_drift_recovered"]
    # While the window slides from night back to day it holds a mixture, which may itself stand out for a
    # moment; every metric ends recovered, each state change announced once.
    for name, types in by_metric(clock.events).items():
        assert types[-1] == "prediction_drift_recovered", name
        assert all(a != b for a, b in pairwise(types)), name
    assert monitor.stats_section()["cam"]["state"] == "watching"


def test_a_dirty_lens_shows_in_the_confidences_not_in_the_counts(tmp_path: Path) -> None:
    monitor = DriftMonitor(config(tmp_path))
    clock = Clock(monitor)
    clock.run(day, 120)
    metrics = by_metric(clock.run(dirty_lens, 90))
    assert "mean_confidence" in metrics and "confidence_distance" in metrics
    assert "detections_per_frame" not in metrics and not any(m.startswith("class_share") for m in metrics)


def test_a_wrong_model_shows_in_the_class_shares(tmp_path: Path) -> None:
    monitor = DriftMonitor(config(tmp_path))
    clock = Clock(monitor)
    clock.run(day, 120)
    metrics = by_metric(clock.run(wrong_model, 90))
    assert metrics.get("class_share:kite") == ["prediction_drift"], "a label the baseline never saw"
    assert metrics.get("class_share:car") == ["prediction_drift"]
    assert "detections_per_frame" not in metrics


def test_floors_keep_a_zero_variance_baseline_quiet_on_noise(tmp_path: Path) -> None:
    def steady(rng: np.random.Generator) -> tuple[list[int], list[float]]:
        return [1, 1], [0.82, 0.82]  # no variation at all across sub-windows

    def noisy(rng: np.random.Generator) -> tuple[list[int], list[float]]:
        # A stray kite now and then, a third car every ~12 frames, confidences a little off.
        ids = [1, 1] + ([1] if rng.random() < 0.08 else []) + ([2] if rng.random() < 0.01 else [])
        return ids, [0.82 + float(rng.normal(0, 0.005)) for _ in ids]

    monitor = DriftMonitor(config(tmp_path))
    clock = Clock(monitor)
    clock.run(steady, 70)
    metrics = monitor.camera("cam").baseline.metric  # type: ignore[union-attr]
    assert metrics("detections_per_frame").std == pytest.approx(0.2)  # 10% of 2.0
    assert metrics("class_share:kite").std == pytest.approx(0.03)
    assert metrics("mean_confidence").std == pytest.approx(0.02)
    assert clock.run(noisy, 200) == []
    # A real change still stands out against the floors.
    assert "detections_per_frame" in by_metric(clock.run(lambda rng: ([1], [0.82]), 60))


def test_no_comparison_before_the_window_is_full_or_with_too_few_frames(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monitor = DriftMonitor(config(tmp_path, window_s=30, min_frames=400))
    clock = Clock(monitor)
    clock.run(day, 60)
    with caplog.at_level("WARNING"):
        assert clock.run(night, 120) == [], "a 30 s window at 10 fps never has 400 frames"
    assert monitor.stats_section()["cam"]["window"]["full"] is False
    assert monitor.stats_section()["cam"]["metrics"] == {}
    sparse = [r.getMessage() for r in caplog.records if "fewer than min_frames" in r.getMessage()]
    assert len(sparse) == 1, "said once (at most hourly), not every second"
    assert sparse[0].startswith("drift: camera cam: 300 frames in the last 30 s, fewer than min_frames 400")


def test_disabled_reconfigured_and_cameras_removed(tmp_path: Path) -> None:
    off = DriftMonitor(config(tmp_path, enabled=False))
    Clock(off).run(day, 10)
    assert off.stats_section() == {"cam": {"state": "off"}}
    monitor = DriftMonitor(config(tmp_path))
    clock = Clock(monitor)
    clock.run(day, 120)
    monitor.reconfigure(config(tmp_path, threshold_sigma=1000))
    assert clock.run(night, 60) == [], "the new threshold applies at once"
    assert monitor.stats_section()["cam"]["baseline"]["source"] == "learned", "the baseline survives a reload"
    monitor.reconfigure(config(tmp_path, enabled=False))
    assert monitor.stats_section() == {"cam": {"state": "off"}} and monitor.check(clock.t) == []


def test_prometheus_gauges_come_from_the_drift_section(tmp_path: Path) -> None:
    from app.web.metrics import Metrics

    monitor = DriftMonitor(config(tmp_path))
    clock = Clock(monitor)
    clock.run(day, 120)
    clock.run(night, 60)
    text = Metrics(lambda: {"drift": monitor.stats_section()}).render().decode()
    assert 'vigil_drift_alert{camera="cam",metric="detections_per_frame"} 1.0' in text
    assert 'vigil_drift_z{camera="cam",metric="detections_per_frame"} -' in text
    assert 'vigil_drift_alert{camera="cam",metric="class_share:car"}' in text


def _recorded(tmp_path: Path) -> tuple[VigilConfig, dict]:
    cfg = config(tmp_path)
    learner = DriftMonitor(cfg, load_baselines=False)
    Clock(learner, seed=7).run(day, 61)
    baseline = learner.camera("cam").baseline  # type: ignore[union-attr]
    assert baseline is not None
    doc = baseline_document("cam", cfg.model.path, baseline)
    write_baseline(baseline_path(cfg.state_dir, "cam"), doc)
    return cfg, doc


def test_a_baseline_file_is_loaded_and_watched_from_the_first_result(tmp_path: Path, caplog) -> None:
    cfg, doc = _recorded(tmp_path)
    assert (
        doc["version"] == 1
        and doc["camera"] == "cam"
        and abs(doc["frames"] - 600) <= 2
        and len(doc["sub_windows"]) == 6
    )
    assert doc["metrics"]["detections_per_frame"]["std"] > 0
    with caplog.at_level(logging.INFO, logger="app.monitoring.drift"):
        monitor = DriftMonitor(cfg)
    assert "baseline loaded from" in caplog.text
    clock = Clock(monitor)
    clock.run(day, 1)
    cam = monitor.stats_section()["cam"]
    assert cam["state"] == "watching" and cam["baseline"]["source"] == "file"
    assert cam["baseline"]["frames"] == doc["frames"]
    assert clock.run(day, 60) == []
    assert "detections_per_frame" in by_metric(clock.run(night, 60))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: p.write_text("{not json"), "unusable baseline file"),
        (lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "version": 9})), "version 9"),
        (lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "camera": "door"})), "camera 'door'"),
        (lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "sub_windows": []})), "sub_windows"),
        (lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "model": "other.onnx"})), "other.onnx"),
    ],
)
def test_an_unusable_baseline_file_is_a_warning_and_the_camera_learns(
    tmp_path: Path, caplog, damage: Callable[[Path], None], message: str
) -> None:
    cfg, _ = _recorded(tmp_path)
    damage(baseline_path(cfg.state_dir, "cam"))
    with caplog.at_level(logging.WARNING, logger="app.monitoring.drift"):
        monitor = DriftMonitor(cfg)
    assert message in caplog.text and "learning a new baseline" in caplog.text
    assert monitor.stats_section()["cam"]["state"] == "learning"


# ---- end to end: real worker processes, real video, real mosquitto, the CLI -----------------------------------

BASE = "vigil/dev"
CLIP_FPS = 12.5  # every other frame of bikes.mp4: the same 10 s of scene, half the frames to detect


def night_frame(frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A day scene at night-like levels: grey (an IR camera), x0.12, with sensor noise."""
    grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY).astype(np.float32) * 0.12 + rng.normal(0, 3, frame.shape[:2])
    return cv2.cvtColor(np.clip(grey, 0, 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)


def other_scene(frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Another scene: the camera zoomed onto the lower right quarter (bicycles and people, few cars)."""
    h, w = frame.shape[:2]
    return cv2.resize(frame[h // 2 :, w // 2 :], (w, h))


def derived_clip(sample: Path, path: Path, day_s: float, then_s: float = 0.0, then: Callable | None = None) -> Path:
    """`day_s` of bikes.mp4 looped at CLIP_FPS, then `then_s` of it transformed by `then` (frame, rng)."""
    cap = cv2.VideoCapture(str(sample))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    frames = frames[::2]
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), CLIP_FPS, (w, h))
    rng = np.random.default_rng(3)
    n_day, n_then = int(day_s * CLIP_FPS), int(then_s * CLIP_FPS)
    for i in range(n_day + n_then):
        frame = frames[i % len(frames)]
        writer.write(frame if i < n_day or then is None else then(frame, rng))
    writer.release()
    return path


def e2e_config(model: Path, cameras: list[dict], state_dir: Path, port: int | None = None, **drift) -> VigilConfig:
    # Sub-windows as long as one loop of the clip's scene (10 s), the window two: a sub-window shorter than the
    # scene's own cycle would measure the cycle, not the camera (README: choose baseline_windows accordingly).
    # Frame minimums a loaded 2-core machine meets: three cameras share one detector there at ~1 result/s each.
    # Every frame of the whole picture is detected: drift compares the detector's answers on a fixed stream, and
    # the scheduler's mix of region crops (bigger objects, higher scores) and whole frames follows the motion, so
    # it would move the confidence histogram by itself (README "Prediction drift": regions and drift).
    d = {"baseline_s": 40, "baseline_windows": 4, "window_s": 20, "min_frames": 12, "min_detections": 12, **drift}
    return VigilConfig.model_validate(
        {
            "device_id": "dev",
            "state_dir": str(state_dir),
            "cameras": [every_frame({"realtime": True, **c}) for c in cameras],
            "model": {"path": str(model), "threads": 1, "imgsz": 320, "classes": None},
            "output": {"json_lines": False, "status_interval_s": 0},
            "http": {"enabled": False},
            "mqtt": {"enabled": port is not None, "port": port or 1883, "stats_interval_s": 1},
            "monitoring": {"drift": d},
        }
    )


def test_darkness_and_a_new_scene_alert_on_mqtt_while_a_stable_camera_stays_silent(
    coco_model: Path, sample_video: Path, broker, tmp_path: Path
) -> None:
    from support.broker import Subscriber

    from app.mqtt.service import MqttService
    from app.pipeline.live import LivePipeline

    day_s = 70.0  # covers start-up plus the 40 s baseline with room to spare on a loaded machine
    cameras = [
        {"name": "stable", "source": str(derived_clip(sample_video, tmp_path / "stable.mp4", 20)), "loop": True},
        {"name": "night", "source": str(derived_clip(sample_video, tmp_path / "n.mp4", day_s, 45, night_frame))},
        {"name": "scene", "source": str(derived_clip(sample_video, tmp_path / "s.mp4", day_s, 45, other_scene))},
    ]
    cfg = e2e_config(coco_model, cameras, tmp_path / "state", broker.port)
    sub = Subscriber(broker, f"{BASE}/#")
    pipe = LivePipeline(cfg, [MqttService(cfg)], duration_s=360)

    def drifting(cam: str) -> list[dict]:
        return [p for p in payloads(sub, f"{BASE}/{cam}/system") if p["event"] == "prediction_drift"]

    def last_drift() -> dict:
        docs = sub.on(f"{BASE}/stats")
        return json.loads(docs[-1].payload)["drift"] if docs else {}

    def driver() -> None:
        def night_counts() -> list[dict]:
            return [p for p in drifting("night") if p["metric"] == "detections_per_frame"]

        assert wait_until(night_counts, timeout=280), f"no detections_per_frame drift for night: {last_drift()}"
        assert wait_until(lambda: drifting("scene"), timeout=60), f"no prediction_drift for scene: {last_drift()}"
        # The stats document says so too; the stable camera goes on being compared a while longer.
        sub.wait_for(
            lambda m: m.topic == f"{BASE}/stats" and json.loads(m.payload)["drift"]["night"]["state"] == "drifting",
            timeout=30,
        )
        compared = len(sub.on(f"{BASE}/stats"))
        assert wait_until(lambda: len(sub.on(f"{BASE}/stats")) >= compared + 15, timeout=60)

    run_driven(pipe, driver)
    sub.close()
    night = drifting("night")
    dpf = [p for p in night if p["metric"] == "detections_per_frame"]
    assert dpf and dpf[0]["camera"] == "night" and dpf[0]["z"] < -2 and dpf[0]["current"] < dpf[0]["baseline"]
    assert set(dpf[0]) >= {"event", "type", "reason", "at", "metric", "baseline", "current", "z"}
    assert drifting("scene"), "a changed scene"
    assert payloads(sub, f"{BASE}/stable/system") == [], "the stable camera raised nothing"
    stats = [json.loads(m.payload)["drift"] for m in sub.on(f"{BASE}/stats")]
    last = stats[-1]
    assert last["stable"]["state"] == "watching" and last["stable"]["baseline"]["source"] == "learned"
    assert last["stable"]["window"]["full"] and last["stable"]["metrics"]["detections_per_frame"]["z"] is not None
    assert any(d["night"]["metrics"].get("detections_per_frame", {}).get("alert") for d in stats)


def test_a_recorded_baseline_is_loaded_by_the_next_run(tiny_model: Path, small_video: Path, tmp_path: Path) -> None:
    from app.cli import main
    from app.pipeline.live import LivePipeline

    state = tmp_path / "state"
    cfg_file = tmp_path / "vigil.yaml"
    cfg = e2e_config(tiny_model, [{"name": "cam", "source": str(small_video), "loop": True}], state)
    cfg_file.write_text(json.dumps(cfg.model_dump(mode="json")))
    out = tmp_path / "copy.json"
    args = ["drift", "baseline", "--config", str(cfg_file), "--camera", "cam", "--duration", "3"]
    assert main([*args, "--set", "monitoring.drift.baseline_windows=3", "--output", str(out)]) == 0
    doc = json.loads(baseline_path(state, "cam").read_text())
    assert doc == json.loads(out.read_text())
    assert doc["camera"] == "cam" and doc["model"] == str(tiny_model) and len(doc["sub_windows"]) == 3
    assert doc["metrics"]["class_share:person"]["baseline"] == 1.0
    assert main(["drift", "baseline", "--config", str(cfg_file), "--camera", "door", "--duration", "3"]) == 2
    assert main([*args[:-1], "0"]) == 2

    pipe = LivePipeline(cfg, [], duration_s=60)
    seen: dict = {}

    def driver() -> None:
        assert wait_until(lambda: pipe.stats_document()["drift"]["cam"]["state"] == "watching", timeout=30)
        seen.update(pipe.stats_document()["drift"]["cam"])

    run_driven(pipe, driver)
    assert seen["baseline"]["source"] == "file" and seen["baseline"]["frames"] == doc["frames"]
