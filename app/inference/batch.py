"""Detection on a set of frames, each on its planned regions, as few backend calls as the model allows.

The scheduler (`app.inference.worker`) decides which cameras' frames are due and `app.inference.regions` where in
each frame to look; this module runs them. Every region of every frame becomes one model input (a crop letterboxed
to the model's input); inputs go to the backend in batches of at most `model.max_batch` when the model has a
dynamic batch axis (one call per input otherwise); each frame's boxes are mapped back to its pixels and merged.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from app.inference.detector import Detector
from app.ring import FrameView
from app.types import Box, Detections, StageTimings


@dataclass(frozen=True, slots=True)
class FrameJob:
    """One frame to detect on, and where.

    Attributes:
        camera: The camera's name.
        view: The frame, zero-copy from its ring (checked with `is_valid()` after it was read).
        regions: xyxy frame-pixel boxes to run the detector on (`plan_regions`); the whole frame is one region.
    """

    camera: str
    view: FrameView
    regions: tuple[Box, ...]


@dataclass(frozen=True, slots=True)
class FrameOutcome:
    """What became of one FrameJob.

    Attributes:
        job: The job.
        detections: Boxes in frame pixels, merged over its regions; None when the frame was not detected on.
        timings: This frame's share of the preprocess / inference / postprocess time, ms.
        error: Why there are no detections: `overwritten` (the ring slot was rewritten while it was read: take the
            newer frame) or the backend's error; None on success.
    """

    job: FrameJob
    detections: Detections | None
    timings: StageTimings
    error: str | None = None


def detect_frames(detector: Detector, jobs: Sequence[FrameJob], max_batch: int = 1) -> list[FrameOutcome]:
    """Run the detector on every region of every job, batched up to `max_batch` where the model allows it.

    Args:
        detector: The loaded detector.
        jobs: Frames with their regions.
        max_batch: Inputs per backend call at most (`model.max_batch`).

    Returns:
        One outcome per job, in order. A backend failure fails every job of that call (`error` set), never raises.
    """
    out = []
    for job in jobs:
        t0 = time.perf_counter()
        try:
            tensor, geometry, pre_ms = detector.prepare(job.view.image)
            if not job.view.is_valid():
                out.append(FrameOutcome(job, None, StageTimings(pre_ms, 0.0, 0.0), "overwritten"))
                continue
            outputs, inf_ms = detector.infer(tensor)
            det, post_ms = detector.decode(outputs, geometry)
        except Exception as exc:
            ms = (time.perf_counter() - t0) * 1000.0
            out.append(FrameOutcome(job, None, StageTimings(0.0, ms, 0.0), f"{type(exc).__name__}: {exc}"))
            continue
        out.append(FrameOutcome(job, det, StageTimings(pre_ms, inf_ms, post_ms)))
    return out
