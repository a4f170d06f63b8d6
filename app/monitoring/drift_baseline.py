"""Baseline files: a camera's recorded prediction baseline, `<state_dir>/drift/<camera>.json`.

Written by `vigil drift baseline`, read by the drift monitor at start. Version 1:

    {"version": 1, "camera": "door", "model": "engines/yolov3-tiny-coco.onnx", "created": "2026-...Z",
     "duration_s": 600.0, "frames": 5400, "detections": 11880, "sub_window_s": 60.0, "bins": 20,
     "sub_windows": [{"frames", "detections", "confidence_sum", "classes": {label: n},
                      "confidence_histogram": [20 ints]}],
     "metrics": {name: {"baseline", "std"}}}

`sub_windows` is what the monitor uses (it recomputes every statistic from them); `metrics` is for people.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.clock import iso_utc
from app.monitoring.drift_stats import (
    BINS,
    CLASS_SHARE,
    CONFIDENCE_DISTANCE,
    DETECTIONS_PER_FRAME,
    MEAN_CONFIDENCE,
    Baseline,
    Tally,
)

VERSION = 1


class BaselineFileError(Exception):
    """A baseline file that cannot be used (unreadable, not JSON, another version or camera, bad values)."""


class _SubWindow(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    frames: int = Field(ge=0)
    detections: int = Field(ge=0)
    confidence_sum: float = Field(ge=0)
    classes: dict[str, int]
    confidence_histogram: list[int] = Field(min_length=BINS, max_length=BINS)


class _BaselineFile(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    version: int
    camera: str
    model: str
    created: str
    duration_s: float = Field(gt=0)
    sub_window_s: float = Field(gt=0)
    bins: int
    sub_windows: list[_SubWindow] = Field(min_length=2)


def baseline_path(state_dir: str | Path, camera: str) -> Path:
    """Where camera `camera`'s baseline file lives under the state dir."""
    return Path(state_dir) / "drift" / f"{camera}.json"


def baseline_document(camera: str, model: str, baseline: Baseline) -> dict:
    """The JSON document of a baseline file (version 1) for `camera`, recorded with model file `model`."""
    names = [DETECTIONS_PER_FRAME, MEAN_CONFIDENCE, CONFIDENCE_DISTANCE] + [CLASS_SHARE + lb for lb in baseline.labels]
    metrics = {}
    for name in names:
        m = baseline.metric(name)
        if m is not None:
            metrics[name] = {"baseline": round(m.level, 4), "std": round(m.std, 4)}
    return {
        "version": VERSION,
        "camera": camera,
        "model": model,
        "created": iso_utc(time.time()),
        "duration_s": round(baseline.sub_window_s * len(baseline.windows), 3),
        "frames": baseline.total.frames,
        "detections": baseline.total.detections,
        "sub_window_s": baseline.sub_window_s,
        "bins": BINS,
        "sub_windows": [w.as_json() for w in baseline.windows],
        "metrics": metrics,
    }


def write_baseline(path: Path, document: dict) -> None:
    """Write `document` to `path` atomically (a temporary file renamed over it), creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(document, indent=1) + "\n")
    os.replace(tmp, path)


def read_baseline(path: Path, camera: str, min_class_share: float) -> tuple[Baseline, dict]:
    """Load a baseline file.

    Args:
        path: The file.
        camera: The camera it must belong to.
        min_class_share: Passed on to `Baseline`.

    Returns:
        The baseline and the file's header (`model`, `created`, `duration_s`, `frames`).

    Raises:
        BaselineFileError: Unreadable, not JSON, another version, bins or camera, or invalid values.
    """
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BaselineFileError(f"{path}: {exc}") from exc
    try:
        parsed = _BaselineFile.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "file"
        raise BaselineFileError(f"{path}: {where}: {first['msg']}") from None
    if parsed.version != VERSION:
        raise BaselineFileError(f"{path}: version {parsed.version} (this Vigil reads version {VERSION})")
    if parsed.bins != BINS:
        raise BaselineFileError(f"{path}: {parsed.bins} histogram bins (expected {BINS})")
    if parsed.camera != camera:
        raise BaselineFileError(f"{path}: recorded for camera {parsed.camera!r}, not {camera!r}")
    windows = [Tally.from_json(w.model_dump()) for w in parsed.sub_windows]
    try:
        baseline = Baseline(windows, parsed.sub_window_s, min_class_share)
    except ValueError as exc:
        raise BaselineFileError(f"{path}: {exc}") from exc
    header = {
        "model": parsed.model,
        "created": parsed.created,
        "duration_s": parsed.duration_s,
        "frames": baseline.total.frames,
    }
    return baseline, header
