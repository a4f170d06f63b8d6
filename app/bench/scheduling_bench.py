"""Camera scheduling figures: a static scene with motion gating on and off, and how many cameras the box holds.

  static    one camera on a clip with no motion (a still frame of the source plus sensor noise, made at bench
            time): detections and main-process + worker CPU time with motion gating on (the defaults) and off
            (`motion.enabled: false`, the same `detect` settings); bounds: detections <= seconds / idle_interval_s
            + 1 and CPU at least 5x lower with gating
  capacity  N cameras of the moving source at `detect.fps` 5: detections/s per camera, min/max ratio, p99 frame
            age against 2 x median inference + one frame interval; then a sweep over camera counts with half the
            cameras static: the most cameras whose moving half each hold 5 detections/s

Every run is the real pipeline in this process (the main process) with its spawned worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import psutil

from app.bench.common import BenchError, read_frames
from app.config import ModelConfig, VigilConfig
from app.pipeline.records import ResultRecord
from app.pipeline.service import ServiceBase

STATIC_CPU_GOAL = 5.0  # CPU with motion gating off / on, at least
HOLD_FPS = 5.0  # detect.fps of the capacity runs, and what a moving camera must hold
HOLD_TOLERANCE = 0.95  # a camera "holds" 5 det/s at 4.75 measured (window edges, start-up jitter)


class _PerCamera(ServiceBase):
    """Results per camera in the measured window: count, frame ages and inference times (ms)."""

    def __init__(self) -> None:
        self.open = False
        self.count: dict[str, int] = defaultdict(int)
        self.ages_ms: list[float] = []
        self.inference_ms: list[float] = []

    def on_result(self, record: ResultRecord) -> None:
        if not self.open:
            return
        self.count[record.camera] += 1
        self.ages_ms.append(record.frame_age_ms)
        self.inference_ms.append(record.result.timings.inference_ms)


def static_clip(source: str, path: Path, seconds: float, fps: float = 25.0, noise: float = 2.0) -> Path:
    """A clip of `seconds` with no motion: the source's first frame with fresh Gaussian sensor noise each frame.

    Args:
        source: The video whose first frame is the scene.
        path: Where to write the MP4 (mp4v).
        seconds: Its length.
        fps: Its frame rate.
        noise: Standard deviation of the noise, grey levels.

    Raises:
        BenchError: OpenCV cannot write the file.
    """
    still = read_frames(source, 1)[0]
    h, w = still.shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise BenchError(f"cannot write {path} (OpenCV mp4v)")
    rng = np.random.default_rng(14)
    base = still.astype(np.float32)
    noisy = [np.clip(base + rng.normal(0, noise, still.shape), 0, 255).astype(np.uint8) for _ in range(16)]
    for i in range(max(1, round(seconds * fps))):
        writer.write(noisy[i % len(noisy)])
    writer.release()
    return path


def _config(model: ModelConfig, cameras: list[dict[str, Any]]) -> VigilConfig:
    return VigilConfig.model_validate(
        {
            "device_id": "bench",
            "cameras": cameras,
            "model": model.model_dump(),
            "output": {"json_lines": False, "status_interval_s": 0},
            "http": {"enabled": False},
        }
    )


def _camera(name: str, source: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "source": source, "loop": True, "realtime": True, **extra}


def _cpu_s(proc: psutil.Process | None) -> float:
    if proc is None:
        return 0.0
    try:
        t = proc.cpu_times()
    except psutil.Error:
        return 0.0
    return float(t.user + t.system)


def _measure(cfg: VigilConfig, seconds: float, warmup_s: float) -> dict[str, Any]:
    """Run the pipeline, skip `warmup_s` after the first result, then measure a window of `seconds`.

    Returns:
        `seconds` (the window), `detections` per camera, `ages_ms` and `inference_ms` (every result of the
        window), `cpu_s` {main, worker}.

    Raises:
        BenchError: No result within 120 s (the model or a source does not work).
    """
    from app.pipeline.live import LivePipeline

    rec = _PerCamera()
    pipe = LivePipeline(cfg, [rec])
    summary: list[Any] = []
    thread = threading.Thread(target=lambda: summary.append(asyncio.run(pipe.run())), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while pipe.last_result_age_s() is None:
            if time.monotonic() > deadline or not thread.is_alive():
                raise BenchError("the pipeline gave no result in 120 s")
            time.sleep(0.1)
        time.sleep(warmup_s)
        main = psutil.Process()
        worker_pid = pipe.worker_info.pid if pipe.worker_info is not None else None
        worker = psutil.Process(worker_pid) if worker_pid else None
        c0 = (_cpu_s(main), _cpu_s(worker))
        rec.open, t0 = True, time.monotonic()
        time.sleep(seconds)
        c1 = (_cpu_s(main), _cpu_s(worker))
        rec.open, window = False, time.monotonic() - t0
    finally:
        loop = pipe._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the pipeline already ended (it failed): its loop is closed
                loop.call_soon_threadsafe(pipe.request_stop, "bench window done")
        thread.join(60)
    return {
        "seconds": window,
        "detections": {c.name: rec.count.get(c.name, 0) for c in cfg.cameras},
        "ages_ms": rec.ages_ms,
        "inference_ms": rec.inference_ms,
        "cpu_s": {"main": round(c1[0] - c0[0], 2), "worker": round(c1[1] - c0[1], 2)},
    }


def bench_static(model: ModelConfig, source: str, seconds: float, idle_interval_s: float = 10.0) -> dict:
    """Motion gating on a static scene: detections and CPU with gating on and off.

    Args:
        model: The model config.
        source: The video whose first frame becomes the static scene.
        seconds: The measured window of each run (the clip is at least this long; the issue's figure: 30).
        idle_interval_s: `detect.idle_interval_s` of the camera.

    Returns:
        Per run (`gating_on`, `gating_off`): detections, detections/s, CPU seconds of the main process and the
        worker and their sum; the detection bound and whether it is met, the CPU ratio off/on and whether it
        reaches `STATIC_CPU_GOAL`.
    """
    with tempfile.TemporaryDirectory(prefix="vigil-bench-static-") as tmp:
        clip = str(static_clip(source, Path(tmp) / "static.mp4", max(seconds, 10.0)))
        detect = {"idle_interval_s": idle_interval_s}
        runs = {}
        for name, motion in (("gating_on", True), ("gating_off", False)):
            cam = _camera("static", clip, detect=detect, motion={"enabled": motion})
            m = _measure(_config(model, [cam]), seconds, warmup_s=2.0)
            cpu = m["cpu_s"]
            n = m["detections"]["static"]
            runs[name] = {
                "detections": n,
                "detections_per_s": round(n / m["seconds"], 3),
                "cpu_main_s": cpu["main"],
                "cpu_worker_s": cpu["worker"],
                "cpu_s": round(cpu["main"] + cpu["worker"], 2),
                "cpu_pct": round(100 * (cpu["main"] + cpu["worker"]) / m["seconds"], 1),
            }
    bound = seconds / idle_interval_s + 1
    on, off = runs["gating_on"], runs["gating_off"]
    ratio = off["cpu_s"] / on["cpu_s"] if on["cpu_s"] > 0 else None
    return {
        "seconds": seconds,
        "idle_interval_s": idle_interval_s,
        **runs,
        "detections_bound": round(bound, 2),
        "detections_within_bound": on["detections"] <= bound,
        "cpu_ratio_off_vs_on": None if ratio is None else round(ratio, 2),
        "cpu_goal": STATIC_CPU_GOAL,
        "cpu_goal_met": ratio is not None and ratio >= STATIC_CPU_GOAL,
    }


def _capacity_run(model: ModelConfig, moving: str, static: str | None, n: int, seconds: float) -> dict:
    """`n` cameras at detect.fps 5: all moving, or (with `static`) the first half moving and the rest static."""
    n_moving = n if static is None else (n + 1) // 2
    cams = [
        _camera(f"cam{i}", moving if i < n_moving or static is None else static, detect={"fps": HOLD_FPS})
        for i in range(n)
    ]
    m = _measure(_config(model, cams), seconds, warmup_s=3.0)
    rates = {c: round(k / m["seconds"], 3) for c, k in m["detections"].items()}
    moving_rates = [rates[f"cam{i}"] for i in range(n_moving)]
    return {"cameras": n, "moving": n_moving, "rates": rates, "moving_rates": moving_rates, "measure": m}


def bench_capacity(model: ModelConfig, source: str, seconds: float, cameras: int = 4,
                   sweep: Sequence[int] = ()) -> dict:  # fmt: skip
    """Cameras of moving video at detect.fps 5: the rate each gets, fairness and freshness; then the sweep.

    Args:
        model: The model config.
        source: A video with motion (looped, real time).
        seconds: Measured window of each run.
        cameras: Cameras of the main run.
        sweep: Camera counts to try with half the cameras static (a still of the source plus noise).

    Returns:
        `rates` (detections/s per camera), `min_max_ratio`, `frame_age_ms` percentiles, `inference_ms_p50`,
        `frame_interval_ms`, `age_bound_ms` (2 x median inference + one frame interval) and `age_within_bound`,
        `all_hold` (every camera >= 5 x 0.95 det/s); `sweep`: per count the moving cameras' rates and whether
        they hold, and `max_cameras_holding` (None when none held or no sweep ran).

    Raises:
        BenchError: `cameras` < 1 or a sweep count < 2.
    """
    if cameras < 1 or any(k < 2 for k in sweep):
        raise BenchError("capacity: --capacity-cameras must be >= 1 and every --capacity-sweep count >= 2")
    cap = cv2.VideoCapture(source)
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    cap.release()
    main = _capacity_run(model, source, None, cameras, seconds)
    m = main.pop("measure")
    rates = list(main["rates"].values())
    ages, inf = np.asarray(m["ages_ms"], float), m["inference_ms"]
    if not len(ages) or not inf:
        raise BenchError("capacity: no result in the measured window")
    med_inf = statistics.median(inf)
    bound = 2 * med_inf + 1000.0 / fps
    p99 = float(np.percentile(ages, 99))
    out: dict[str, Any] = {
        "seconds": round(m["seconds"], 1),
        "cameras": cameras,
        "detect_fps": HOLD_FPS,
        "rates": main["rates"],
        "min_max_ratio": round(min(rates) / max(rates), 3) if max(rates) > 0 else 0.0,
        "all_hold": all(r >= HOLD_FPS * HOLD_TOLERANCE for r in rates),
        "frame_age_ms": {f"p{q}": round(float(np.percentile(ages, q)), 1) for q in (50, 95, 99)},
        "inference_ms_p50": round(med_inf, 2),
        "frame_interval_ms": round(1000.0 / fps, 1),
        "age_bound_ms": round(bound, 1),
        "age_within_bound": p99 <= bound,
        "cpu_s": m["cpu_s"],
        "sweep": [],
        "max_cameras_holding": None,
    }
    if sweep:
        with tempfile.TemporaryDirectory(prefix="vigil-bench-capacity-") as tmp:
            still = str(static_clip(source, Path(tmp) / "static.mp4", 10.0, fps))
            for n in sorted(set(sweep)):
                run = _capacity_run(model, source, still, n, seconds)
                run.pop("measure")
                run["hold"] = all(r >= HOLD_FPS * HOLD_TOLERANCE for r in run["moving_rates"])
                out["sweep"].append(run)
        held = [r["cameras"] for r in out["sweep"] if r["hold"]]
        out["max_cameras_holding"] = max(held) if held else None
    return out
