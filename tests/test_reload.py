"""Live config reload: the plan (pure), then end to end with real workers, real video and a real mosquitto:
cameras added, changed and removed, thresholds, tracking, MQTT moved to another broker, monitors reconfigured,
a model change through a blue-green recycle, restart-only sections reported, an invalid config rejected, and
the triggers (SIGHUP to `python -m app run`, `vigil reload`, the endpoint's 401)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import yaml
from conftest import REPO, Collect, make_video, run_driven, vigil_shm_segments, wait_until
from support.broker import Broker, Subscriber, free_port
from support.onnx_models import dense_constant_model

from app.config import VigilConfig
from app.pipeline.live import LivePipeline
from app.reload.plan import diff_keys, plan_reload
from app.reload.source import ConfigSource


def cfg_of(**sections) -> VigilConfig:
    base: dict = {"cameras": [{"name": "a", "source": "a.mp4"}]}
    return VigilConfig.model_validate({**base, **sections})


# ---- the plan (pure) ---------------------------------------------------------------------------------------


def test_plan_unchanged_config_changes_nothing() -> None:
    plan = plan_reload(cfg_of(), cfg_of())
    assert plan.live == () and plan.restart == () and not plan.cameras
    assert set(plan.unchanged) == set(VigilConfig.model_fields)


def test_plan_sorts_sections_into_live_and_restart_with_their_keys() -> None:
    old = cfg_of(mqtt={"enabled": True}, http={"port": 8080}, model={"conf": 0.25})
    new = cfg_of(mqtt={"enabled": True, "port": 1884}, http={"port": 9090, "host": "0.0.0.0", "token_env": "T"},
                 model={"conf": 0.5}, budget={"window_s": 10}, device_id="other")  # fmt: skip
    plan = plan_reload(old, new)
    answer = plan.as_dict()
    assert answer["applied"]["mqtt"]["keys"] == ["mqtt.port"]
    assert answer["applied"]["budget"]["keys"] == ["budget.window_s"]
    assert answer["applied"]["model"] == {"keys": ["model.conf"], "action": "applied to the serving worker"}
    assert not plan.model_worker
    assert answer["restart_required"]["http"]["keys"] == ["http.host", "http.port", "http.token_env"]
    assert "bind address" in answer["restart_required"]["http"]["why"]
    assert set(answer["restart_required"]) == {"http", "device_id"}
    assert "cameras" in answer["unchanged"] and "tracking" in answer["unchanged"]
    assert list(answer["applied"])[-1] == "model"  # applied last: a new worker sees everything else first


def test_plan_cameras_by_name() -> None:
    old = cfg_of(cameras=[{"name": "a", "source": "a.mp4"}, {"name": "b", "source": "b.mp4"},
                          {"name": "c", "source": "c.mp4"}])  # fmt: skip
    new = cfg_of(cameras=[{"name": "c", "source": "c.mp4", "max_width": 640}, {"name": "a", "source": "x.mp4"},
                          {"name": "d", "source": 0}])  # fmt: skip
    plan = plan_reload(old, new)
    c = plan.cameras
    assert (c.added, c.removed, c.changed, c.new_ring) == (("d",), ("b",), ("c", "a"), ("c",))
    assert plan.live[0].section == "cameras"
    assert plan.live[0].keys == ("cameras.a.source", "cameras.b", "cameras.c.max_width", "cameras.d")
    # a camera's budget alone restarts no capture (only the monitors follow it)
    cams = [*old.model_dump()["cameras"][:2], {"name": "c", "source": "c.mp4", "budget": {"total_ms": 50}}]
    budget = plan_reload(old, cfg_of(cameras=cams))
    assert not budget.cameras and budget.live[0].keys == ("cameras.c.budget",), budget
    # reordering alone is no change
    assert not plan_reload(old, cfg_of(cameras=list(reversed(old.model_dump()["cameras"])))).cameras


def test_plan_a_detect_change_restarts_no_capture() -> None:
    old = cfg_of(cameras=[{"name": "a", "source": "a.mp4"}, {"name": "b", "source": "b.mp4"}])
    new = cfg_of(cameras=[{"name": "a", "source": "a.mp4", "detect": {"fps": 2, "idle_interval_s": 30}},
                          {"name": "b", "source": "x.mp4", "detect": {"fps": None}}])  # fmt: skip
    plan = plan_reload(old, new)
    c = plan.cameras
    assert (c.changed, c.detect) == (("b",), ("a", "b")) and c
    assert plan.live[0].keys == ("cameras.a.detect.fps", "cameras.a.detect.idle_interval_s", "cameras.b.detect.fps",
                                 "cameras.b.source")  # fmt: skip
    assert plan.live[0].action == "capture restarted: b; detection schedule applied: a, b"


def test_plan_motion_zones_filters_and_masks_restart_no_capture() -> None:
    zone = {"name": "z", "polygon": [[0, 0], [1, 0], [1, 1]]}
    old = cfg_of(cameras=[{"name": "a", "source": "a.mp4"}, {"name": "b", "source": "b.mp4"},
                          {"name": "c", "source": "c.mp4"}])  # fmt: skip
    new = cfg_of(cameras=[{"name": "a", "source": "a.mp4", "motion": {"threshold": 40}, "zones": [zone]},
                          {"name": "b", "source": "b.mp4", "filters": {"person": {"min_score": 0.5}},
                           "object_mask": [zone["polygon"]]},
                          {"name": "c", "source": "x.mp4", "zones": [zone]}])  # fmt: skip
    plan = plan_reload(old, new)
    c = plan.cameras
    assert (c.changed, c.motion, c.objects) == (("c",), ("a",), ("a", "b")), c
    assert plan.live[0].action == ("capture restarted: c; motion detection applied: a; zones, filters and masks "
                                   "applied: a, b")  # fmt: skip


def test_plan_model_beyond_thresholds_needs_a_worker() -> None:
    assert plan_reload(cfg_of(), cfg_of(model={"path": "other.onnx", "conf": 0.3})).model_worker
    assert not plan_reload(cfg_of(), cfg_of(model={"iou": 0.3, "deploy": {"canary_frames": 5}})).model_worker


def test_diff_keys() -> None:
    assert diff_keys({"a": 1, "b": {"c": [1, 2]}}, {"a": 1, "b": {"c": [1, 3]}}, "x") == ["x.b.c.1"]
    assert diff_keys([1], [1, 2], "w") == ["w"]


# ---- end to end --------------------------------------------------------------------------------------------


class StubMonitor:
    """A monitor that only counts `reconfigure` calls (the real ones are the budget and drift monitors)."""

    section = "stub"

    def __init__(self) -> None:
        self.reconfigured: list[VigilConfig] = []

    def observe(self, record, published_mono_ns: int) -> None:
        pass

    def observe_frame_error(self, camera: str) -> None:
        pass

    def check(self, now_mono: float) -> list:
        return []

    def stats_section(self) -> dict:
        return {"reconfigured": len(self.reconfigured)}

    def reconfigure(self, cfg: VigilConfig) -> None:
        self.reconfigured.append(cfg)


class Events(Collect):
    """Results (as JSON) and system events."""

    def __init__(self) -> None:
        super().__init__()
        self.system: list[dict] = []
        self.lock = threading.Lock()

    def on_system_event(self, event) -> None:
        self.system.append(event.as_dict())

    def since(self, n: int, camera: str) -> list[dict]:
        return [r for r in self.records[n:] if r["camera"] == camera]


def camera(name: str, video: Path, **extra) -> dict:
    return {"name": name, "source": str(video), "loop": True, "realtime": True, "fps": 20, **extra}


class ConfigFile:
    """The config file the pipeline reloads from, edited by the test between reloads."""

    def __init__(self, path: Path, data: dict) -> None:
        self.path, self.data = path, data
        self.write()

    def write(self) -> None:
        self.path.write_text(yaml.safe_dump(self.data, sort_keys=False))

    def source(self) -> ConfigSource:
        return ConfigSource(str(self.path))


def reload(pipe: LivePipeline) -> dict:
    assert pipe._loop is not None
    return asyncio.run_coroutine_threadsafe(pipe.reload_config(), pipe._loop).result(180)


def test_reload_end_to_end(tmp_path: Path, tiny_model: Path, small_video: Path) -> None:
    wide_video = make_video(tmp_path / "wide.mp4", frames=40, size=(200, 100))
    other_model = dense_constant_model(tmp_path / "other.onnx", np.array([[16, 16, 8, 8, 0.8, 0.05]]))
    b1, b2 = (tmp_path / "b1", tmp_path / "b2")
    b1.mkdir(), b2.mkdir()
    broker1, broker2 = Broker(b1).start(), Broker(b2).start()
    sub2 = Subscriber(broker2, "vigil/vigil/#")
    file = ConfigFile(tmp_path / "vigil.yaml", {
        "cameras": [camera("a", small_video)],
        "model": {"path": str(tiny_model), "threads": 1, "warmup_runs": 0, "deploy": {"min_agreement_f1": 0}},
        "state_dir": str(tmp_path / "state"),
        "output": {"json_lines": False, "status_interval_s": 0},
        "http": {"enabled": False},
        "mqtt": {"enabled": True, "port": broker1.port, "stats_interval_s": 60},
        "worker": {"restart_backoff_s": 0.1},
    })  # fmt: skip
    cfg = file.source().load()
    sink = Events()
    pipe = LivePipeline(cfg, [sink], config_source=file.source())
    monitor = StubMonitor()
    pipe.monitors.append(monitor)
    answers: dict[str, dict] = {}

    def results_of(cam: str, after: int, n: int = 3, timeout: float = 60):
        assert wait_until(lambda: len(sink.since(after, cam)) >= n, timeout), f"no results for {cam}"
        return sink.since(after, cam)

    def driver() -> None:
        results_of("a", 0)
        first_rings = vigil_shm_segments(os.getpid())
        # add a camera: it gets results, its ring exists
        file.data["cameras"].append(camera("b", small_video))
        file.write()
        answers["add"] = a = reload(pipe)
        assert a["status"] == "applied" and a["applied"]["cameras"]["keys"] == ["cameras.b"], a
        n = len(sink.records)
        results_of("b", n)
        assert len(vigil_shm_segments(os.getpid())) == len(first_rings) + 1
        # change camera a's source (same ring): its frames now come from the 200x100 clip
        file.data["cameras"][0]["source"] = str(wide_video)
        file.write()
        assert reload(pipe)["applied"]["cameras"]["keys"] == ["cameras.a.source"]
        n = len(sink.records)
        assert wait_until(lambda: any(r["width"] == 200 for r in sink.since(n, "a")), 60)
        # a new ring size for a: a new segment replaces the old one, results go on
        ring_a = pipe.rings["a"].name
        file.data["cameras"][0]["max_width"] = 320
        file.write()
        assert reload(pipe)["status"] == "applied"
        assert pipe.rings["a"].name != ring_a and ring_a not in vigil_shm_segments(os.getpid())
        n = len(sink.records)
        results_of("a", n)
        # thresholds: the constant 0.9 box is gone above conf 0.95
        file.data["model"]["conf"] = 0.95
        file.write()
        assert reload(pipe)["applied"]["model"]["action"] == "applied to the serving worker"
        n = len(sink.records)
        assert wait_until(lambda: any(not r["detections"] for r in sink.since(n, "a")), 60)
        file.data["model"]["conf"] = 0.25
        # a's detect section: applied to the worker, no capture restart; a is detected at most 0.5 times a second
        capture_a = pipe.captures["a"]
        file.data["cameras"][0]["detect"] = {"fps": 0.5}
        file.write()
        a = reload(pipe)
        assert a["applied"]["cameras"]["action"] == "detection schedule applied: a", a
        assert pipe.captures["a"] is capture_a
        results_of("a", len(sink.records), 1)  # (one may already be on its way)
        n, t0 = len(sink.records), time.monotonic()
        results_of("b", n, 15)
        assert len(sink.since(n, "a")) <= 0.5 * (time.monotonic() - t0) + 2
        del file.data["cameras"][0]["detect"]
        file.write()
        assert reload(pipe)["applied"]["cameras"]["keys"] == ["cameras.a.detect.fps"]
        # a's motion section and zones: applied live, no capture restart (an RTSP reconnect would cost seconds of
        # video for redrawing a zone); motion off: results carry no motion verdict, the zone is tracked at once
        file.data["cameras"][0]["motion"] = {"enabled": False}
        file.data["cameras"][0]["zones"] = [{"name": "left", "polygon": [[0, 0], [0.5, 0], [0.5, 1], [0, 1]]}]
        file.write()
        a = reload(pipe)
        assert a["applied"]["cameras"]["action"] == ("motion detection applied: a; zones, filters and masks "
                                                     "applied: a"), a  # fmt: skip
        assert pipe.captures["a"] is capture_a and "left" in pipe.tracking.zone_counts("a")
        n = len(sink.records)
        assert wait_until(lambda: any(r["motion"] is None for r in sink.since(n, "a")), 60)
        del file.data["cameras"][0]["motion"], file.data["cameras"][0]["zones"]
        file.write()
        assert reload(pipe)["applied"]["cameras"]["keys"] == ["cameras.a.motion.enabled", "cameras.a.zones"]
        n = len(sink.records)
        assert wait_until(lambda: any(r["motion"] is not None for r in sink.since(n + 2, "a")), 60)
        assert pipe.captures["a"] is capture_a, "the same capture thread all along"
        # remove b: no more results, its ring leaves /dev/shm
        ring_b = pipe.rings["b"].name
        del file.data["cameras"][1]
        file.write()
        assert reload(pipe)["applied"]["cameras"]["keys"] == ["cameras.b"]
        assert ring_b not in vigil_shm_segments(os.getpid()) and "b" not in pipe.stats
        n = len(sink.records)
        results_of("a", n, 10)
        assert not sink.since(n + 3, "b")  # (a result already on its way may still land right after)
        # MQTT to another broker, budget and monitoring reconfigure the monitors, an http change is reported
        file.data["mqtt"]["port"] = broker2.port
        file.data["budget"] = {"window_s": 5}
        file.data["monitoring"] = {"drift": {"window_s": 60}}
        file.data["http"]["port"] = 9999
        file.write()
        calls = len(monitor.reconfigured)
        answers["mqtt"] = a = reload(pipe)
        assert {"mqtt", "budget", "monitoring"} <= set(a["applied"]), a
        assert a["restart_required"]["http"]["keys"] == ["http.port"], a
        assert pipe.cfg.http.port != 9999  # not applied
        assert len(monitor.reconfigured) == calls + 1 and monitor.reconfigured[-1].budget.window_s == 5
        sub2.wait_for(lambda m: m.topic == "vigil/vigil/a/system" and json.loads(m.payload)["event"]
                      == "config_reloaded", 30)  # fmt: skip
        sub2.wait_for(lambda m: m.topic == "vigil/vigil/a/detections", 30)
        # an invalid config is rejected whole, naming the key; the old config keeps running
        file.data["cameras"][0]["fps"] = -1
        file.data["tracking"] = {"min_hits": 5}
        file.write()
        answers["bad"] = a = reload(pipe)
        assert a["status"] == "rejected" and "cameras.0.fps" in a["error"], a
        assert pipe.cfg.tracking.min_hits == 2 and pipe.cfg.cameras[0].fps == 20
        n = len(sink.records)
        results_of("a", n)
        # a model path change goes through _apply_model_change: a validated deployment, then results of the new
        # model (min_agreement_f1 is 0: the new model disagrees with the old one on purpose)
        file.data["cameras"][0]["fps"] = 20
        del file.data["tracking"]
        file.data["model"]["path"] = str(other_model)
        file.write()
        a = reload(pipe)
        assert a["applied"]["model"]["action"] == "deploying", a
        deployed = lambda: (pipe.deployments.last_deployment or {}).get("outcome")  # noqa: E731
        assert wait_until(lambda: deployed() is not None, 120)
        assert deployed() == "deployed", pipe.deployments.last_deployment
        assert pipe.cfg.model.path == str(other_model)
        n = len(sink.records)
        new = results_of("a", n, 5)[-1]
        assert new["detections"] and new["detections"][0]["box"] != sink.since(0, "a")[0]["detections"][0]["box"]

    try:
        summary = run_driven(pipe, driver)
    finally:
        sub2.close()
        broker1.stop()
        broker2.stop()
    assert summary.exit_code == 0
    kinds = [e["type"] for e in sink.system]
    assert kinds.count("config_rejected") == 1 and kinds.count("config_reloaded") >= 7
    rejected = next(e for e in sink.system if e["type"] == "config_rejected")
    assert "cameras.0.fps" in rejected["error"]
    reloaded = [e for e in sink.system if e["type"] == "config_reloaded"]
    assert any(e["restart_required"] == ["http"] for e in reloaded)
    assert not vigil_shm_segments(os.getpid())


def _post(url: str, token: str | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=b"{}", method="POST", headers={"Content-Type": "application/json"})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_sighup_cli_and_endpoint_on_a_running_service(tmp_path: Path, tiny_model: Path, small_video: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token-for-reload\n")
    port = free_port()
    data = {
        "cameras": [camera("a", small_video)],
        "model": {"path": str(tiny_model), "threads": 1, "warmup_runs": 0},
        "output": {"json_lines": True, "status_interval_s": 0},
        "http": {"port": port, "token_file": str(token_file)},
        "state_dir": str(tmp_path / "state"),
    }
    config = ConfigFile(tmp_path / "vigil.yaml", data)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "app", "run", "--config", str(config.path)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    lines: list[dict] = []
    err: list[str] = []
    threading.Thread(target=lambda: [lines.append(json.loads(x)) for x in proc.stdout], daemon=True).start()
    threading.Thread(target=lambda: [err.append(x) for x in proc.stderr], daemon=True).start()
    try:
        assert wait_until(lambda: lines or proc.poll() is not None, 120) and lines, "".join(err)
        # SIGHUP: a second camera appears in the JSON lines
        data["cameras"].append(camera("b", small_video))
        config.write()
        proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: any(r["camera"] == "b" for r in lines), 60), "".join(err)
        assert wait_until(lambda: any("config_reloaded" in e for e in err), 10)
        # the endpoint wants the token like the rest of the API
        url = f"http://127.0.0.1:{port}/api/config/reload"
        status, body = _post(url)
        assert status == 401 and "token" in body["error"]
        status, body = _post(url, "s3cret-token-for-reload")
        assert status == 200 and body["status"] == "applied" and body["applied"] == {}, body
        # `vigil reload`: the answer as JSON; a rejection is one error line and exit 2
        cli = [sys.executable, "-m", "app", "reload", "--config", str(config.path)]
        data["tracking"] = {"min_hits": 3}
        config.write()
        ok = subprocess.run(cli, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert ok.returncode == 0, ok.stderr
        assert json.loads(ok.stdout)["applied"]["tracking"]["keys"] == ["tracking.min_hits"]
        client = ConfigFile(tmp_path / "client.yaml", data)  # a valid copy: where the service is, its token
        data["tracking"] = {"min_hits": 0}
        config.write()
        for args in (cli, [*cli[:-1], str(client.path)]):  # refused here already, then by the service
            bad = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120)
            assert bad.returncode == 2 and bad.stderr.startswith("error: "), bad.stderr
            assert "tracking.min_hits" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
        assert "rejected" in bad.stderr
        n = len(lines)
        assert wait_until(lambda: len(lines) > n + 5, 30)  # still running, on the old config
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert proc.returncode == 0, "".join(err[-20:])


def test_reload_through_the_web_service(tmp_path: Path, tiny_model: Path, small_video: Path) -> None:
    from support.web_harness import Served, web_config

    cfg = web_config(tiny_model, small_video)
    data = cfg.model_dump(mode="json", exclude_defaults=True)
    with Served(cfg) as s:
        file = ConfigFile(tmp_path / "vigil.yaml", data)
        s.pipe.reloader.source = file.source()
        data["cameras"].append(camera("b", small_video))
        data["api"] = {"max_ws_clients": 3}
        file.write()
        status, body = _post(s.url + "/api/config/reload")
        assert status == 200 and set(body["applied"]) == {"cameras", "api"}, body
        with urllib.request.urlopen(s.url + "/api/cameras", timeout=30) as resp:
            assert [c["name"] for c in json.loads(resp.read())["cameras"]] == ["cam", "b"]
        assert set(s.web.encoders) == {"cam", "b"} and s.web.stream.cameras == ["cam", "b"]
        assert s.web.stream.max_clients == 3
        del data["cameras"][0]
        file.write()
        status, body = _post(s.url + "/api/config/reload")
        assert status == 200 and body["applied"]["cameras"]["keys"] == ["cameras.cam"], body
        assert set(s.web.encoders) == {"b"}
        data["cameras"][0]["fps"] = 0
        file.write()
        status, body = _post(s.url + "/api/config/reload")
        assert status == 422 and body["status"] == "rejected" and "cameras.0.fps" in body["error"], body
        # valid, but a secret file it names cannot be read: rejected before anything changed
        data["cameras"][0]["fps"] = 20
        data["webhooks"] = [{"url": "http://127.0.0.1:9/hook", "secret_file": str(tmp_path / "missing")}]
        data["api"] = {"max_ws_clients": 5}
        file.write()
        status, body = _post(s.url + "/api/config/reload")
        assert status == 422 and "webhooks.0.secret_file" in body["error"], body
        assert s.web.stream.max_clients == 3 and not s.pipe.cfg.webhooks
