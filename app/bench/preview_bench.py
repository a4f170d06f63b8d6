"""Preview cost: processed fps and main-process CPU with 0, 1 and 4 WebRTC viewers, interleaved in one run.

The viewers are real aiortc peers in a separate nice-19 process that does not decode (see
preview_client); the pipeline, the HTTP service and the shared encoder run exactly as in `vigil run`.
A last window with one viewer at normal priority measures latency (its fps is not compared).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import threading
import time

import psutil

from app.bench.common import bench_camera
from app.config import ModelConfig, VigilConfig
from app.pipeline.records import ResultRecord
from app.pipeline.service import ServiceBase


class _Count(ServiceBase):
    def __init__(self) -> None:
        self.n = 0

    def on_result(self, record: ResultRecord) -> None:
        self.n += 1


def bench_preview(
    model: ModelConfig, source: str, seconds: float, rounds: int, counts: tuple[int, ...] = (0, 1, 4)
) -> dict:
    """Measure the preview's cost in windows of 0, 1 and 4 viewers (``counts``), interleaved over rounds.

    Args:
        model: The model config the pipeline runs.
        source: The looping video the camera reads (paced in real time).
        seconds: Length of each measured window.
        rounds: How many times every viewer count is measured.
        counts: Viewer counts; must include 0 (the baseline).

    Returns:
        Per count: processed fps (median and per round), relative to 0 viewers, main-process CPU % (also per
        viewer), and the viewers' latency, frames and CPU; then one latency window at normal priority.
    """
    from app.pipeline.live import LivePipeline
    from app.web.server import WebService

    cfg = VigilConfig.model_validate(
        {
            "device_id": "bench",
            "cameras": [bench_camera("bench", source)],
            "model": model.model_dump(),
            "output": {"json_lines": False, "status_interval_s": 0},
            "http": {"port": 0, "preview_width": 640, "preview_fps": 15, "max_viewers": max(counts)},
        }
    )
    web = WebService(cfg)
    count = _Count()
    pipe = LivePipeline(cfg, [count, web])
    thread = threading.Thread(target=lambda: asyncio.run(pipe.run()), daemon=True)
    thread.start()
    while not web.url or not pipe.last_result_age_s():
        time.sleep(0.1)
    time.sleep(5)  # past the first, slower frames
    me = psutil.Process()
    per: dict[int, dict[str, list]] = {n: {"fps": [], "main_cpu": [], "client": []} for n in counts}
    try:
        for _ in range(rounds):
            for n in counts:
                client = None
                if n:
                    argv = ["-m", "app.bench.preview_client", web.url.rstrip("/"), str(n), str(seconds + 4), "19"]
                    client = subprocess.Popen([sys.executable, *argv], stdout=subprocess.PIPE, text=True)
                    time.sleep(4)  # connected and streaming before the window opens
                c0, t0, r0 = me.cpu_times(), time.monotonic(), count.n
                time.sleep(seconds)
                c1, t1, r1 = me.cpu_times(), time.monotonic(), count.n
                per[n]["fps"].append((r1 - r0) / (t1 - t0))
                per[n]["main_cpu"].append((c1.user + c1.system - c0.user - c0.system) / (t1 - t0))
                if client is not None:
                    out, _ = client.communicate(timeout=60)
                    per[n]["client"].append(json.loads(out.strip().splitlines()[-1]))
                time.sleep(1)
        argv = ["-m", "app.bench.preview_client", web.url.rstrip("/"), "1", str(seconds), "0"]
        out = subprocess.run([sys.executable, *argv], capture_output=True, text=True).stdout
        latency = json.loads(out.splitlines()[-1])
    finally:
        loop = pipe._loop
        assert loop is not None  # run() set it before the first result came
        loop.call_soon_threadsafe(pipe.request_stop, "bench done")
        thread.join(30)
    res: dict = {"seconds_per_window": seconds, "rounds": rounds, "preview": "640 px, 15 fps, VP8 shared encoder"}
    base_fps = statistics.median(per[0]["fps"])
    base_cpu = statistics.median(per[0]["main_cpu"])
    for n in counts:
        fps = statistics.median(per[n]["fps"])
        cpu = statistics.median(per[n]["main_cpu"])
        row = {
            "processed_fps": round(fps, 2),
            "fps_rounds": [round(f, 2) for f in per[n]["fps"]],
            "vs_0_viewers": round(fps / base_fps, 3),
            "main_cpu_pct": round(cpu * 100, 1),
            "main_cpu_pct_per_viewer": round((cpu - base_cpu) * 100 / n, 1) if n else None,
        }
        clients = per[n]["client"]
        if clients:
            lat = [c["video_latency_ms_p50"] for c in clients if c["video_latency_ms_p50"] is not None]
            det = [c["detection_delay_ms_p50"] for c in clients if c["detection_delay_ms_p50"] is not None]
            row["video_latency_ms_p50"] = round(statistics.median(lat), 1) if lat else None
            row["detection_delay_ms_p50"] = round(statistics.median(det), 1) if det else None
            row["frames_per_viewer"] = clients[-1]["frames_per_viewer"]
            row["client_errors"] = sum(len(c["errors"]) for c in clients)
            client_s = statistics.median(c["client_cpu_s"] for c in clients)
            row["client_cpu_pct"] = round(client_s * 100 / (seconds + 4), 1)
        res[f"viewers_{n}"] = row
    res["latency_1_viewer_nice_0"] = {
        "video_latency_ms_p50": latency["video_latency_ms_p50"],
        "detection_delay_ms_p50": latency["detection_delay_ms_p50"],
        "frames": latency["frames_per_viewer"],
    }
    return res
