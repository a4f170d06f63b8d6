"""MQTT benchmarks: sustained detections publishing with a subscriber, and the processed-fps cost of MQTT.

The cost is MQTT on vs off (interleaved rounds). Starts its own mosquitto on a free loopback port.
"""

from __future__ import annotations

import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from app.bench.common import bench_camera, run_to_end
from app.config import ModelConfig, VigilConfig


class LocalBroker:
    """A throwaway mosquitto on a free 127.0.0.1 port (anonymous, no persistence); ``close()`` kills it.

    Raises:
        SystemExit: mosquitto is not installed or does not accept connections within 10 s.
    """

    def __init__(self) -> None:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(exe).exists():
            raise SystemExit("error: the MQTT benchmark needs mosquitto (apt-get install mosquitto)")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._dir = tempfile.TemporaryDirectory()
        conf = Path(self._dir.name) / "m.conf"
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        self.proc = subprocess.Popen([exe, "-c", str(conf)], stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise SystemExit("error: mosquitto did not start")

    def close(self) -> None:
        """Kill the broker and remove its config folder."""
        self.proc.kill()
        self.proc.wait(5)
        self._dir.cleanup()


class Counter:
    """A subscriber counting the messages on one topic; construction waits (up to 10 s) for the subscription.

    Args:
        port: Broker port on 127.0.0.1.
        topic: Topic filter to subscribe to (QoS 0).
    """

    def __init__(self, port: int, topic: str) -> None:
        self.n = 0
        self.ready = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=0)
        self.client.on_subscribe = lambda *a: self.ready.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.ready.wait(10)

    def _on_message(self, *a: Any) -> None:
        self.n += 1

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self.client.disconnect()
        self.client.loop_stop()


def _config(model: ModelConfig, source: str, fps: float, port: int | None, max_rate: float) -> VigilConfig:
    mqtt = {"enabled": port is not None, "port": port or 1883, "detections_max_rate_hz": max_rate,
            "stats_interval_s": 5}  # fmt: skip
    return VigilConfig.model_validate(
        {
            "device_id": "bench",
            "cameras": [bench_camera("cam", source, fps=fps)],
            "model": model.model_dump(),
            "output": {"json_lines": False, "status_interval_s": 0},
            "mqtt": mqtt,
        }
    )


def _run(cfg: VigilConfig, seconds: float) -> dict:
    """One live run; with MQTT enabled the service is both a sink and a service, as in `vigil run`."""
    from app.mqtt.service import MqttService
    from app.pipeline.live import LivePipeline

    services = [MqttService(cfg)] if cfg.mqtt.enabled else []
    pipe = LivePipeline(cfg, list(services), duration_s=seconds)
    summary = run_to_end(pipe)
    cam = summary.cameras["cam"]
    out = {"processed": cam["frames_processed"], "seconds": summary.duration_s}
    if services:
        out["published"] = services[0].link.stats.published
    return out


def bench_mqtt_rate(seconds: float, fps: float = 30.0) -> dict:
    """Feed the MQTT service alone `fps` results/s (3 people each) with no rate limit and one subscriber.

    Answers whether every detections message arrives, and what one result costs the main loop: its whole
    turn per result, the tracking stage then MQTT publishing the events and the record, through the fan-out.

    Returns:
        Results offered and detections received (counts and per second), and ``handle`` time p50/p99 in ms.
    """
    import numpy as np

    from app.mqtt.service import MqttService
    from app.pipeline.fanout import ResultFanout
    from app.tracking.stage import TrackingStage
    from app.types import Detections, FrameMeta, FrameResult, StageTimings

    broker = LocalBroker()
    try:
        counter = Counter(broker.port, "vigil/bench/cam/detections")
        cfg = _config(ModelConfig(), "unused.mp4", fps, broker.port, max_rate=1000.0)
        svc = MqttService(cfg)
        fanout = ResultFanout([svc], [TrackingStage(cfg)])
        svc.link.start()
        fanout.model_ready({0: "Normal", 1: "Fall"})
        deadline = time.monotonic() + 10
        while not svc.link.stats.connected and time.monotonic() < deadline:
            time.sleep(0.05)
        det = Detections(
            np.array([[10, 20, 60, 200], [200, 30, 260, 220], [400, 10, 470, 230]], np.float32),
            np.array([0.9, 0.8, 0.7], np.float32),
            np.array([0, 0, 1], np.int32),
        )
        n = int(seconds * fps)
        cost = []
        t0 = time.monotonic()
        for i in range(n):
            now = time.monotonic_ns()
            r = FrameResult("cam", FrameMeta(i + 1, i, i / fps, now, time.time(), 272, 640), det,
                            StageTimings(1, 5, 1), now, now, 1)  # fmt: skip
            c0 = time.perf_counter()
            fanout.result(r, now, 0)  # tracking, then MQTT's on_event per event and on_result
            cost.append((time.perf_counter() - c0) * 1000)
            time.sleep(max(0.0, t0 + (i + 1) / fps - time.monotonic()))
        wall = time.monotonic() - t0
        time.sleep(1.0)
        received = counter.n
        svc.link.stop()
        counter.close()
    finally:
        broker.close()
    return {
        "results": n,
        "offered_per_s": round(n / wall, 2),
        "detections_received": received,
        "received_per_s": round(received / wall, 2),
        "received_of_offered": round(received / n, 4),
        "handle_ms_p50": round(float(np.percentile(cost, 50)), 3),
        "handle_ms_p99": round(float(np.percentile(cost, 99)), 3),
    }


def bench_mqtt_cost(model: ModelConfig, source: str, seconds: float, rounds: int) -> dict:
    """Measure the live pipeline's processed fps with MQTT off, on, and on with a dead broker.

    The dead broker has nothing listening, so every reconnect fails. Interleaved rounds, rate limit 10 Hz.
    """
    broker = LocalBroker()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]  # closed again: connections are refused
    arms: dict[str, list[float]] = {"off": [], "on": [], "dead": []}
    ports = {"off": None, "on": broker.port, "dead": dead_port}
    try:
        for _ in range(rounds):
            for arm, port in ports.items():
                r = _run(_config(model, source, 25.0, port, 10.0), seconds)
                arms[arm].append(r["processed"] / r["seconds"])
    finally:
        broker.close()
    med = {arm: statistics.median(v) for arm, v in arms.items()}
    return {
        "rounds": rounds,
        "seconds_per_round": seconds,
        **{f"processed_fps_{arm}": round(m, 3) for arm, m in med.items()},
        **{f"fps_rounds_{arm}": [round(v, 3) for v in vals] for arm, vals in arms.items()},
        "on_vs_off": round(med["on"] / med["off"], 4),
        "dead_vs_off": round(med["dead"] / med["off"], 4),
    }
