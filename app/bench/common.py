"""What several `vigil bench` modes share.

The bench error, frames read from the source, the live pipeline run on the bench config, and latency percentiles. Mode
modules import from here, never from each other.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from app.bench.recorders import SampleRecorder
from app.config import ModelConfig, VigilConfig
from app.stop_signal import raise_stop

if TYPE_CHECKING:
    from app.pipeline.live import LivePipeline, PipelineSummary


class BenchError(ValueError):
    """The bench cannot run as asked (unknown mode, missing file, bad option, unreadable source).

    The message is phrased for the user (the CLI prints it as its `error:` line).
    """


def read_frames(source: str, n: int) -> list[np.ndarray]:
    """The first `n` frames of `source` (BGR, HxWx3 uint8), looping a file shorter than that.

    Raises:
        BenchError: `source` gave no frame at all.
    """
    cap = cv2.VideoCapture(source)
    frames: list[np.ndarray] = []
    while len(frames) < n:
        ok, frame = cap.read()
        if not ok:
            if not frames:
                raise BenchError(f"cannot read frames from {source}")
            cap.release()
            cap = cv2.VideoCapture(source)  # loop short files
            continue
        frames.append(frame)
    cap.release()
    return frames


# The modes that measure the detector and what follows it detect every frame they can: no motion gating and no
# `detect.fps` cap (the defaults would measure the schedule instead). The `static` and `capacity` modes use the
# defaults on purpose.
EVERY_FRAME: dict[str, Any] = {"detect": {"fps": None}, "motion": {"enabled": False}}


def bench_camera(name: str, source: str, **extra: Any) -> dict[str, Any]:
    """A `cameras[]` entry looping `source` at its real rate that detects every frame it can (`EVERY_FRAME`).

    Args:
        name: The camera's name.
        source: The video file.
        **extra: More camera keys (they win).
    """
    return {"name": name, "source": source, "loop": True, "realtime": True, **EVERY_FRAME, **extra}


def live_config(model: ModelConfig, source: str) -> VigilConfig:
    """One camera `bench` on `source`, looped at its real rate, detecting every frame; no JSON lines or status."""
    return VigilConfig.model_validate(
        {
            "device_id": "bench",
            "cameras": [bench_camera("bench", source)],
            "model": model.model_dump(),
            "output": {"json_lines": False, "status_interval_s": 0},
        }
    )


def live_summary(model: ModelConfig, source: str, seconds: float) -> tuple[PipelineSummary, SampleRecorder]:
    """Run the live pipeline on `source` (looped, real time) for `seconds`; its summary and per-frame samples."""
    from app.pipeline.live import LivePipeline  # the pipeline's imports only for the modes that run it

    samples = SampleRecorder()
    pipe = LivePipeline(live_config(model, source), [samples], duration_s=seconds)
    return run_to_end(pipe), samples


def run_to_end(pipe: LivePipeline) -> PipelineSummary:
    """Run a bench's pipeline on this (main) thread until it ends; its summary.

    Raises:
        KeyboardInterrupt, Stopped: A signal stopped it (`app.stop_signal`): the bench stops too, rather than
            report a cut-short run.
    """
    summary = asyncio.run(pipe.run())
    if summary.stop_signal is not None:
        raise_stop(summary.stop_signal)
    return summary


def percentiles(values: list[float]) -> dict[str, float]:
    """p50, p95 and p99 of `values` (ms), rounded to 0.01."""
    a = np.asarray(values, float)
    return {f"p{q}": round(float(np.percentile(a, q)), 2) for q in (50, 95, 99)}
