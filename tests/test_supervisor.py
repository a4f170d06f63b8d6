"""Watchdog and systemd integration with real processes: sd_notify over a real datagram socket, injected
stalls and crashes in the real worker."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from conftest import REPO, Collect, run_driven, vigil_shm_segments, wait_until

from app.bench.recorders import ResultTimes
from app.config import VigilConfig
from app.pipeline.live import LivePipeline
from app.pipeline.records import ResultRecord
from app.pipeline.service import ServiceBase
from app.supervisor.sd_notify import SystemdNotifier


class NotifyListener:
    """What systemd would receive on $NOTIFY_SOCKET, with arrival times."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            for line in data.decode().splitlines():
                self.messages.append((time.monotonic(), line))

    def times(self, field: str) -> list[float]:
        return [t for t, m in self.messages if m == field]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def test_notifier_is_a_noop_without_systemd_and_speaks_the_protocol(tmp_path: Path) -> None:
    assert not SystemdNotifier({}).ready()
    listener = NotifyListener(tmp_path / "notify")
    n = SystemdNotifier({"NOTIFY_SOCKET": listener.path, "WATCHDOG_USEC": "2000000"})
    assert n.watchdog_s == 2.0
    assert n.ready("warming up") and n.watchdog() and n.status("ok") and n.stopping()
    time.sleep(0.3)
    assert [m for _, m in listener.messages] == ["READY=1", "STATUS=warming up", "WATCHDOG=1", "STATUS=ok",
                                                  "STOPPING=1"]  # fmt: skip
    listener.close()
    # abstract-namespace sockets ('@name') too
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    abstract.bind(f"\0vigil-test-{os.getpid()}")
    abstract.settimeout(2)
    assert SystemdNotifier({"NOTIFY_SOCKET": f"@vigil-test-{os.getpid()}"}).watchdog()
    assert abstract.recv(100) == b"WATCHDOG=1"
    abstract.close()
    # WATCHDOG_PID names another process: not ours to ping
    assert SystemdNotifier({"NOTIFY_SOCKET": "x", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}).watchdog_s is None


def start_vigil(tiny_model: Path, video: Path, notify: str, *sets: str, watchdog_usec: int = 400_000):
    args = [sys.executable, "-m", "app", "run", "--config", str(REPO / "configs/default.yaml"),
            "--set", f"model.path={tiny_model}", "--set", f"cameras.0.source={video}", "--set", "mqtt.enabled=false",
            "--set", "output.json_lines=false", "--set", "output.status_interval_s=1", "--set", "http.port=0",
            "--set", "worker.restart_backoff_s=0.2", *[x for s in sets for x in ("--set", s)]]  # fmt: skip
    env = {**os.environ, "NOTIFY_SOCKET": notify, "WATCHDOG_USEC": str(watchdog_usec)}
    return subprocess.Popen(args, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)


def test_ready_watchdog_status_stopping(tiny_model: Path, small_video: Path, tmp_path: Path) -> None:
    listener = NotifyListener(tmp_path / "notify")
    proc = start_vigil(tiny_model, small_video, listener.path)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(listener.times("WATCHDOG=1")) < 5:
            time.sleep(0.1)
        assert listener.times("READY=1"), listener.messages
        assert listener.times("READY=1")[0] < listener.times("WATCHDOG=1")[0]
        time.sleep(1.2)
        assert any(m.startswith("STATUS=street: in") for _, m in listener.messages)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
        listener.close()
    assert proc.returncode == 0, err
    assert listener.times("STOPPING=1")


def test_injected_stall_stops_watchdog_pings_and_is_recovered(
    tiny_model: Path, small_video: Path, tmp_path: Path
) -> None:
    listener = NotifyListener(tmp_path / "notify")
    proc = start_vigil(
        tiny_model, small_video, listener.path,
        "debug.faults.stall_after_frames=20", "debug.faults.stall_s=120",
        "watchdog.stall_timeout_s=2", "watchdog.notify_max_result_age_s=1",
    )  # fmt: skip
    err = ""
    try:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            pings = listener.times("WATCHDOG=1")
            gaps = [b - a for a, b in itertools.pairwise(pings)]
            if gaps and max(gaps) > 1.5 and pings[-1] - pings[gaps.index(max(gaps)) + 1] > 1.0:
                break  # a gap in the pings, and pings again for a while after it
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        listener.close()
    pings = listener.times("WATCHDOG=1")
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert gaps and max(gaps) > 1.5, "WATCHDOG=1 must stop while the worker is stalled"
    m = re.search(r"worker stalled \(no result for ([\d.]+) s", err)
    assert m, err[-2000:]
    assert float(m.group(1)) <= 2 + 1, "detected within stall_timeout_s + 1 s"
    assert "restarting in" in err and proc.returncode == 0


def test_crash_loop_backs_off_then_exits_nonzero(tiny_model: Path, small_video: Path, tmp_path: Path) -> None:
    listener = NotifyListener(tmp_path / "notify")
    proc = start_vigil(
        tiny_model, small_video, listener.path,
        "debug.faults.crash_after_frames=3", "watchdog.max_restarts=2", "watchdog.restart_window_s=60",
    )  # fmt: skip
    try:
        children = []
        deadline = time.monotonic() + 10
        while not children and time.monotonic() < deadline:
            children = psutil.Process(proc.pid).children(recursive=True)
            time.sleep(0.05)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        listener.close()
    assert proc.returncode == 3, err[-2000:]
    assert err.count("restart: worker died (exit code 70)") == 3  # the system event, once per death
    delays = [float(x) for x in re.findall(r"restarting in ([\d.]+) s", err)]
    assert delays == sorted(delays) and len(delays) == 2 and delays[1] > delays[0], "exponential backoff"
    assert "exceed watchdog.max_restarts=2" in err
    assert not vigil_shm_segments(proc.pid)
    _, alive = psutil.wait_procs([c for c in children if c.is_running()], timeout=5)
    assert not alive


# ---- recycling and the capture watchdog, in-process ---------------------------------------------------------


def live_config(model: Path, video: Path, **sections) -> VigilConfig:
    data = {
        "cameras": [{"name": "cam", "source": str(video), "loop": True, "realtime": True, "fps": 25}],
        "model": {"path": str(model), "threads": 1},
        "output": {"json_lines": False, "status_interval_s": 0},
        "worker": {"restart_backoff_s": 0.2},
    }
    data.update(sections)
    return VigilConfig.model_validate(data)


def test_leak_triggers_blue_green_recycle_without_a_gap(tiny_model: Path, small_video: Path) -> None:
    sink = ResultTimes()
    cfg = live_config(
        tiny_model, small_video,
        watchdog={"rss_warmup_s": 1, "rss_window_s": 4, "max_rss_growth_mb_per_hour": 3600, "max_rss_mb": 4000},
        debug={"faults": {"leak_mb_per_frame": 0.5}},
    )  # fmt: skip
    pipe = LivePipeline(cfg, [sink])
    seen: dict = {}

    def stop_after_recycle() -> None:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and pipe.worker_recycles < 1:
            time.sleep(0.05)
        seen["event"] = pipe.last_system_event
        time.sleep(2.0)  # results from the new worker
        pipe._loop.call_soon_threadsafe(pipe.request_stop, "test done")

    threading.Thread(target=stop_after_recycle, daemon=True).start()
    summary = asyncio.run(pipe.run())
    assert summary.worker_recycles >= 1 and summary.worker_restarts == 0
    assert seen["event"]["type"] == "recycle" and "RSS growing" in seen["event"]["reason"]
    rss_now = float(re.search(r"now (\d+) MB", seen["event"]["reason"]).group(1))
    assert rss_now < 4000, "recycled on growth, long before max_rss_mb"
    gaps = np.diff(sink.t)
    median = float(np.median(gaps))
    # Loose here (a loaded CI machine); the benchmark states the exact bound (2x the median interval).
    assert gaps.max() < max(1.0, 10 * median), (gaps.max(), median)
    assert sink.seqs == sorted(sink.seqs), "results stay in capture order through the handover"


class RecycleWatch(ServiceBase):
    """When the recycle began and when the standby took over, with the capture rate (from the stats ticks)
    and the capture watchdog's restarts as the loop saw them meanwhile."""

    def __init__(self, pipe_ref: list) -> None:
        self.pipe_ref = pipe_ref
        self.recycle_at: float | None = None
        self.switched_at: float | None = None
        self.capture_restarts: list[float] = []
        self.capture_fps: list[tuple[float, float]] = []
        self._ready = 0

    def on_model_ready(self, names) -> None:
        self._ready += 1
        if self._ready == 2:
            self.switched_at = time.monotonic()

    def on_system_event(self, event) -> None:
        if event.type == "recycle" and self.recycle_at is None:
            self.recycle_at = time.monotonic()
        elif event.type == "capture_restart":
            self.capture_restarts.append(time.monotonic())

    def on_result(self, record: ResultRecord) -> None:
        self.capture_fps.append((time.monotonic(), self.pipe_ref[0].stats["cam"].captured_rate.rate()))


def test_supervision_goes_on_while_a_standby_loads(
    tiny_model: Path, small_video: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The standby takes 20 s to load (a big engine); meanwhile the first capture hangs in its "driver".
    # The stats ticks, the capture watchdog and the systemd pings must all go on during those 20 s: a
    # recycle runs as its own task, not inside the supervision loop.
    listener = NotifyListener(tmp_path / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", listener.path)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    cfg = live_config(
        tiny_model, small_video,
        watchdog={"recycle_every_h": 2 / 3600, "capture_timeout_s": 1.5},
        debug={"faults": {"standby_load_delay_s": 20, "capture_hang_after_frames": 250, "capture_hang_s": 120}},
    )  # fmt: skip
    ref: list = []
    watch = RecycleWatch(ref)
    pipe = LivePipeline(cfg, [watch], duration_s=200)
    ref.append(pipe)
    try:
        summary = run_driven(pipe, lambda: wait_until(lambda: pipe.worker_recycles >= 1, 150))
    finally:
        listener.close()
    assert summary.worker_recycles == 1 and summary.worker_restarts == 0
    start, end = watch.recycle_at, watch.switched_at
    assert start is not None and end is not None and end - start >= 20
    # The capture watchdog restarted the hung capture while the standby was still loading ...
    assert [t for t in watch.capture_restarts if start < t < end], (start, end, watch.capture_restarts)
    # ... the stats ticks went on (the capture rate would decay to 0 within 5 s without them) ...
    late = [fps for t, fps in watch.capture_fps if start + 6 < t < end]
    assert late and min(late) > 0, late
    # ... and systemd got its pings throughout (every 0.5 s; no gap of even 3 s).
    pings = [t for t in listener.times("WATCHDOG=1") if start <= t <= end]
    assert pings and max(np.diff([start, *pings, end])) < 3.0


def test_periodic_recycle_keeps_results_flowing_and_reaps_old_workers(tiny_model: Path, small_video: Path) -> None:
    sink = ResultTimes()
    cfg = live_config(tiny_model, small_video, watchdog={"recycle_every_h": 2 / 3600})
    pipe = LivePipeline(cfg, [sink], duration_s=120)
    # Until two recycles happened, not a fixed 9 s: a standby loads in ~1 s on a quiet machine, ~6 s under load.
    summary = run_driven(pipe, lambda: wait_until(lambda: pipe.worker_recycles >= 2, 100))
    assert summary.worker_recycles >= 2 and summary.worker_restarts == 0
    workers = [
        c for c in psutil.Process().children(recursive=True)
        if c.is_running() and c.status() != psutil.STATUS_ZOMBIE and "spawn_main" in " ".join(c.cmdline())
    ]  # fmt: skip
    assert workers == [], "every recycled worker has exited"
    assert np.diff(sink.t).max() < 1.0


def test_capture_watchdog_replaces_a_stuck_capture(tiny_model: Path, small_video: Path) -> None:
    sink = ResultTimes()
    cfg = live_config(
        tiny_model, small_video,
        watchdog={"capture_timeout_s": 1.0},
        debug={"faults": {"capture_hang_after_frames": 20, "capture_hang_s": 30}},
    )  # fmt: skip
    pipe = LivePipeline(cfg, [sink])
    seen: dict = {}

    def driver() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (pipe.last_system_event or {}).get("type") != "capture_restart":
            time.sleep(0.05)
        seen["event"] = pipe.last_system_event
        n = len(sink.t)
        while time.monotonic() < deadline and len(sink.t) < n + 20:
            time.sleep(0.05)
        seen["resumed"] = len(sink.t) - n
        pipe._loop.call_soon_threadsafe(pipe.request_stop, "test done")

    threading.Thread(target=driver, daemon=True).start()
    summary = asyncio.run(pipe.run())
    assert seen["event"]["type"] == "capture_restart" and seen["event"]["camera"] == "cam"
    assert seen["resumed"] >= 20, "frames flow again from the new capture thread"
    assert summary.cameras["cam"]["reconnects"] >= 1


def test_backend_failover_is_reported_in_stats_and_as_a_system_event(tiny_model: Path, small_video: Path) -> None:
    """A backend that starts failing mid-stream (a GPU's sticky CUDA error, injected) hands over to ONNX
    Runtime without stopping the results, and stats and system events say so; the retry later fails again
    and is counted."""
    sink = ResultTimes()
    faults = {"backend_fail_after_frames": 10, "backend_retry_s": 2}
    cfg = live_config(tiny_model, small_video, debug={"faults": faults})
    pipe = LivePipeline(cfg, [sink])
    seen: dict = {}

    def watch() -> None:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            worker = pipe.stats_document()["worker"] if pipe.worker_info else {}
            if worker.get("backend_failovers", 0) >= 1 and "first" not in seen:
                seen["first"], seen["event"], seen["results_then"] = worker, pipe.last_system_event, len(sink.t)
            if worker.get("backend_failovers", 0) >= 2:
                seen["second"] = worker
                break
            time.sleep(0.05)
        time.sleep(0.5)
        pipe._loop.call_soon_threadsafe(pipe.request_stop, "test done")

    threading.Thread(target=watch, daemon=True).start()
    summary = asyncio.run(pipe.run())
    first = seen["first"]
    assert first["backend"] == "onnxruntime" and first["providers"] == ["CPUExecutionProvider"]
    assert first["backend_reason"] == "failover #1 to onnxruntime (BackendError: fault injection: device lost)"
    assert seen["event"]["type"] == "backend" and "failover" in seen["event"]["reason"]
    assert seen["second"]["backend_failovers"] == 2, "the retry went back to the failing backend and failed over again"
    assert summary.worker_restarts == 0, "failover happens inside the worker, no restart"
    assert len(sink.t) > seen["results_then"], "results kept flowing on the fallback"
    assert pipe.stats["cam"].errors == 2, "two frames failed before the failover; at the retry one failure is enough"


# ---- stalls are measured from when a frame began to wait (field case: a camera outage) -----------


def _stall_config(model: Path, source: str, **extra) -> VigilConfig:
    data = {
        "cameras": [{"name": "cam", "source": source, "reconnect": {"initial_s": 0.2, "max_s": 0.5}}],
        "model": {"path": str(model), "threads": 1},
        "output": {"json_lines": False, "status_interval_s": 0},
        "worker": {"restart_backoff_s": 0.2},
        # The field case: stall timeout shorter than the outage, one restart allowed: a false stall on
        # each return of the camera would exit 3 on the second one.
        "watchdog": {"stall_timeout_s": 1.5, "max_restarts": 1, "capture_timeout_s": 30},
    }
    data.update(extra)
    return VigilConfig.model_validate(data)


def test_a_camera_outage_longer_than_the_stall_timeout_is_not_a_stall(tiny_model: Path, sample_video: Path) -> None:
    from support.camera_server import MjpegCamera

    cam = MjpegCamera(sample_video).start()
    sink = Collect()
    pipe = LivePipeline(_stall_config(tiny_model, cam.url), [sink], duration_s=120)
    outages: list[tuple[int, int]] = []  # results before and after each outage

    def flapper() -> None:
        for _ in range(2):  # flapping twice
            assert wait_until(lambda: len(sink.records) >= 10 + 20 * len(outages), 60)
            before = len(sink.records)
            cam.outage()
            time.sleep(3.5)  # > 2x stall_timeout_s with no frame at all
            cam.restore()
            assert wait_until(lambda b=before: len(sink.records) >= b + 10, 60), "results resume"
            outages.append((before, len(sink.records)))

    try:
        summary = run_driven(pipe, flapper)
    finally:
        cam.close()
    assert len(outages) == 2, "the camera came back twice and results resumed"
    assert summary.worker_restarts == 0 and summary.exit_code == 0, "a healthy worker is never replaced"
    assert summary.cameras["cam"]["reconnects"] + summary.cameras["cam"]["open_failures"] >= 2


def test_detection_off_then_on_over_mqtt_is_not_a_stall(tiny_model: Path, small_video: Path, broker) -> None:
    from support.broker import Subscriber

    from app.mqtt.service import MqttService

    cfg = _stall_config(
        tiny_model, str(small_video), mqtt={"enabled": True, "port": broker.port, "base_topic": "vigil/dev"}
    )
    cfg.cameras[0].loop, cfg.cameras[0].fps = True, 25
    sink = Collect()
    mqtt = MqttService(cfg)
    pipe = LivePipeline(cfg, [sink, mqtt], duration_s=120)
    sub = Subscriber(broker, "vigil/dev/#")
    marks: dict[str, int] = {}

    def switcher() -> None:
        for _ in range(2):
            assert wait_until(lambda: len(sink.records) >= 10 + 20 * len(marks), 60)
            sub.client.publish("vigil/dev/cam/detect/set", b"OFF", qos=1)
            assert wait_until(lambda: "cam" in pipe._disabled, 10)
            time.sleep(3.5)  # > 2x stall_timeout_s while frames keep arriving
            off = len(sink.records)
            sub.client.publish("vigil/dev/cam/detect/set", b"ON", qos=1)
            assert wait_until(lambda o=off: len(sink.records) >= o + 10, 60), "detection resumes"
            marks[f"on{len(marks)}"] = len(sink.records)

    try:
        summary = run_driven(pipe, switcher)
    finally:
        sub.close()
    assert len(marks) == 2
    assert summary.worker_restarts == 0 and summary.exit_code == 0


def test_a_real_stall_is_still_detected_after_an_idle_camera(tiny_model: Path, sample_video: Path) -> None:
    """The other side of the rule: a frame that waits stall_timeout_s with no inference is a stall, even
    right after an outage (the worker hangs on the first frame back)."""
    from support.camera_server import MjpegCamera

    cam = MjpegCamera(sample_video).start()
    cfg = _stall_config(tiny_model, cam.url, debug={"faults": {"stall_after_frames": 15, "stall_s": 120}})
    sink = Collect()
    pipe = LivePipeline(cfg, [sink], duration_s=120)

    def scenario() -> None:
        assert wait_until(lambda: len(sink.records) >= 10, 60)
        cam.outage()
        time.sleep(3.0)
        cam.restore()  # the worker takes 5 more frames, then hangs: that is a stall
        assert wait_until(lambda: pipe.worker_restarts >= 1, 60)

    try:
        summary = run_driven(pipe, scenario)
    finally:
        cam.close()
    assert summary.worker_restarts >= 1
