"""Detection on a set of frames, each on its planned regions, as few backend calls as the model allows.

The scheduler (`app.inference.worker`) decides which cameras' frames are due and `app.inference.regions` where in
each frame to look; this module runs them. Every region of every frame becomes one model input (a crop, a view of
the frame, letterboxed to the model's input exactly as a whole frame is); inputs go to the backend in batches of at
most `model.max_batch` when batching is on (one call per input otherwise); each frame's boxes are mapped back to its
pixels and merged.

When batching is on (`batch_limit`): the model must take more than one input per call (a dynamic batch axis, e.g.
the default model's `['batch', 3, 'height', 'width']`, or a TensorRT engine built with a profile over
1..`model.max_batch`), the backend must not letterbox on its device (TensorRT `gpu_preprocess` takes one staged frame
per call: those run batch 1 through `Detector.prepare`/`infer`, as before), and the backend must run on a GPU, unless
`batch_on_cpu` says otherwise. On this 2-core CPU with ONNX Runtime, batch N measured no faster than N batch-1 calls
(`vigil bench --modes batch`; README "Regions and batching"), so the CPU default is one input per call; a GPU is idle
between small calls, so batching pays there.

Timings per frame: preprocessing and decoding are measured per input and summed over the frame's inputs (plus its
share of merging); a batched call's inference time is split among the frames in proportion to their inputs in it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from app.backends.base import StagedFrame
from app.inference.decode import MAX_WH, DecodeParams, nms
from app.inference.detector import Detector
from app.letterbox import LetterboxGeometry
from app.types import Box, Detections, StageTimings

BATCH_ON_CPU = False  # measured: no gain on this CPU (see the module docstring); `batch_on_cpu` overrides
CUT_PX = 2.0  # a box edge this close (px) to an inner edge of its crop is cut by the crop
CUT_COVERED = 0.5  # a cut box mostly (this fraction of its area) inside a box of the same class from another crop


class PixelView(Protocol):
    """Pixels to detect on: a ring's `FrameView`, or a `StillFrame`."""

    @property
    def image(self) -> np.ndarray:
        """``(H, W, 3)`` uint8 BGR pixels."""
        ...

    def is_valid(self) -> bool:
        """Whether `image` still holds the frame (a ring slot may have been rewritten meanwhile)."""
        ...


@dataclass(frozen=True, slots=True)
class StillFrame:
    """An owned ``(H, W, 3)`` uint8 BGR frame, valid for ever (benches, requests on a decoded image)."""

    image: np.ndarray

    def is_valid(self) -> bool:
        """Always True: nothing else writes these pixels."""
        return True


@dataclass(frozen=True, slots=True)
class FrameJob:
    """One frame to detect on, and where.

    Attributes:
        camera: The camera's name.
        view: The frame, zero-copy from its ring (`FrameView`, checked with `is_valid()` after it was read).
        regions: xyxy frame-pixel boxes to run the detector on (`plan_regions`); the whole frame is one region.
    """

    camera: str
    view: PixelView
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


def batch_limit(detector: Detector, max_batch: int, batch_on_cpu: bool = BATCH_ON_CPU) -> int:
    """Inputs per backend call for this detector (see the module docstring for when batching is on).

    Args:
        detector: The loaded detector.
        max_batch: `model.max_batch`.
        batch_on_cpu: Batch even when the backend runs on the CPU.

    Returns:
        1..max_batch.
    """
    if max_batch <= 1 or (detector.backend.runs_on_cpu and not batch_on_cpu):
        return 1
    return max(1, min(max_batch, detector.batch_capacity))


@dataclass(slots=True)
class _Frame:
    """Work in progress on one job."""

    job: FrameJob
    pre_ms: float = 0.0
    inf_ms: float = 0.0
    post_ms: float = 0.0
    parts: list[tuple[Detections, Box]] = field(default_factory=list)
    error: str | None = None


@dataclass(slots=True)
class _Input:
    frame: _Frame
    region: Box
    tensor: np.ndarray | StagedFrame
    geometry: LetterboxGeometry


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def crop(image: np.ndarray, region: Box) -> np.ndarray:
    """The region of an ``(H, W, 3)`` frame: a view (no copy); the whole frame is the frame itself."""
    x1, y1, x2, y2 = region
    if (x1, y1) == (0, 0) and (x2, y2) == (image.shape[1], image.shape[0]):
        return image
    return image[y1:y2, x1:x2]


def detect_frames(
    detector: Detector, jobs: Sequence[FrameJob], max_batch: int = 1, *, batch_on_cpu: bool = BATCH_ON_CPU
) -> list[FrameOutcome]:
    """Run the detector on every region of every job, batched up to `max_batch` where that pays.

    Args:
        detector: The loaded detector.
        jobs: Frames with their regions (xyxy frame pixels, inside the frame).
        max_batch: Inputs per backend call at most (`model.max_batch`); `batch_limit` may lower it to 1.
        batch_on_cpu: Batch on a CPU backend too (benches and parity tests).

    Returns:
        One outcome per job, in order: detections in frame pixels (a region equal to the whole frame gives exactly
        `detector.detect(frame)`'s boxes at batch 1), merged over the regions by class-aware NMS and clipped to the
        frame. A frame whose ring slot was rewritten while it was read fails with `overwritten`; a backend failure
        fails every job with an input in that call (`error` set). Never raises.
    """
    frames = [_Frame(job) for job in jobs]
    limit = batch_limit(detector, max_batch, batch_on_cpu)
    pending: list[_Input] = []
    for fr in frames:
        inputs = _prepare(detector, fr)
        if inputs is None:
            continue
        if limit == 1:  # run now: a staged frame's page-locked buffer is reused by the next one
            for inp in inputs:
                _run(detector, [inp])
        else:
            pending.extend(inputs)
    for start in range(0, len(pending), limit):
        _run(detector, pending[start : start + limit])
    return [_finish(fr, detector.params) for fr in frames]


def _prepare(detector: Detector, fr: _Frame) -> list[_Input] | None:
    """Letterbox every region of a frame; None (and the frame's error set) when it failed or was overwritten."""
    view = fr.job.view
    inputs = []
    try:
        for region in fr.job.regions:
            tensor, geometry, ms = detector.prepare(crop(view.image, region))
            fr.pre_ms += ms
            inputs.append(_Input(fr, region, tensor, geometry))
    except Exception as exc:  # a frame of the wrong shape, an empty region
        fr.error = _error(exc)
        return None
    if not view.is_valid():  # every pixel this frame needs has been copied by now
        fr.error = "overwritten"
        return None
    return inputs


def _run(detector: Detector, batch: list[_Input]) -> None:
    """One backend call for `batch`, decoded into each input's frame; a failure fails those frames."""
    t0 = time.perf_counter()
    try:
        if len(batch) == 1:
            outputs, inf_ms = detector.infer(batch[0].tensor)
            per_input = [outputs]
        else:
            tensors = [i.tensor for i in batch]
            assert all(isinstance(t, np.ndarray) for t in tensors)  # batch_limit is 1 for staged frames
            per_input, inf_ms = detector.infer_batch(tensors)  # type: ignore[arg-type]
    except Exception as exc:
        ms = (time.perf_counter() - t0) * 1000.0
        for inp in batch:
            inp.frame.error = inp.frame.error or _error(exc)
            inp.frame.inf_ms += ms / len(batch)
        return
    for inp, outputs in zip(batch, per_input):
        fr = inp.frame
        fr.inf_ms += inf_ms / len(batch)
        try:
            det, post_ms = detector.decode(outputs, inp.geometry)
        except Exception as exc:
            fr.error = fr.error or _error(exc)
            continue
        fr.post_ms += post_ms
        x1, y1 = inp.region[0], inp.region[1]
        if len(det) and (x1 or y1):
            det.xyxy[:, [0, 2]] += np.float32(x1)
            det.xyxy[:, [1, 3]] += np.float32(y1)
        fr.parts.append((det, inp.region))


def _finish(fr: _Frame, params: DecodeParams) -> FrameOutcome:
    timings = StageTimings(fr.pre_ms, fr.inf_ms, fr.post_ms)
    if fr.error is not None:
        return FrameOutcome(fr.job, None, timings, fr.error)
    t0 = time.perf_counter()
    h, w = fr.job.view.image.shape[:2]
    det = merge_regions(fr.parts, (w, h), params)
    merge_ms = (time.perf_counter() - t0) * 1000.0
    return FrameOutcome(fr.job, det, StageTimings(fr.pre_ms, fr.inf_ms, fr.post_ms + merge_ms))


def merge_regions(
    parts: Sequence[tuple[Detections, Box]], frame_wh: tuple[int, int], params: DecodeParams
) -> Detections:
    """One frame's detections from its regions' (already in frame pixels).

    A lone region's detections are returned as they are (the whole frame: what `Detector.detect` gives). Several:
    class-aware NMS at `params.iou` (an object seen in two overlapping crops), then a box cut by an inner edge of
    its crop (within `CUT_PX`) that lies mostly (`CUT_COVERED` of its area) inside a box of the same class from
    another crop is dropped (the object seen whole there), clipped to the frame, best first, `params.max_det` at
    most.

    Args:
        parts: ``(detections, region)`` per region; boxes xyxy frame pixels.
        frame_wh: Frame (width, height), pixels.
        params: The decode parameters in force (`iou`, `agnostic`, `max_det`).

    Returns:
        The merged detections.
    """
    if not parts:
        return Detections.empty()
    if len(parts) == 1:
        return parts[0][0]
    width, height = frame_wh
    xyxy = np.concatenate([d.xyxy for d, _ in parts]).astype(np.float32, copy=False)
    conf = np.concatenate([d.confidence for d, _ in parts])
    cls = np.concatenate([d.class_id for d, _ in parts])
    src = np.concatenate([np.full(len(d), i, np.int32) for i, (d, _) in enumerate(parts)])
    if not len(conf):
        return Detections.empty()
    cut = np.zeros(len(conf), bool)
    for i, (_, (x1, y1, x2, y2)) in enumerate(parts):
        m = src == i
        b = xyxy[m]
        cut[m] = (
            ((x1 > 0) & (b[:, 0] <= x1 + CUT_PX))
            | ((y1 > 0) & (b[:, 1] <= y1 + CUT_PX))
            | ((x2 < width) & (b[:, 2] >= x2 - CUT_PX))
            | ((y2 < height) & (b[:, 3] >= y2 - CUT_PX))
        )
    offset = 0.0 if params.agnostic else cls[:, None].astype(np.float32) * MAX_WH
    keep = nms(xyxy + offset, conf, params.iou)
    area = (xyxy[:, 2] - xyxy[:, 0]) * (xyxy[:, 3] - xyxy[:, 1])
    survivors = []
    for k in keep:
        if cut[k]:
            others = [j for j in keep if j != k and src[j] != src[k] and (params.agnostic or cls[j] == cls[k])]
            others = [j for j in others if not cut[j] or area[j] > area[k]]
            if others:
                ix1 = np.maximum(xyxy[k, 0], xyxy[others, 0])
                iy1 = np.maximum(xyxy[k, 1], xyxy[others, 1])
                ix2 = np.minimum(xyxy[k, 2], xyxy[others, 2])
                iy2 = np.minimum(xyxy[k, 3], xyxy[others, 3])
                inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
                if (inter >= CUT_COVERED * max(float(area[k]), 1e-9)).any():
                    continue
        survivors.append(int(k))
    idx = np.asarray(survivors[: params.max_det], np.int64)
    out = xyxy[idx].copy()
    out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, width)
    out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, height)
    return Detections(out, conf[idx], cls[idx])
