"""Where results go. Sinks must never block the frame path: they get small dicts and write/enqueue them."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import IO, Protocol

from app.clock import iso_utc
from app.types import FrameResult


def result_record(r: FrameResult, names: dict[int, str], received_mono_ns: int, dropped_before: int) -> dict:
    """One processed frame as the JSON object `vigil run` prints (and later sinks publish)."""
    age_ms = (received_mono_ns - r.frame.captured_mono_ns) / 1e6
    latency = r.timings.as_dict()
    latency["queue"] = round((r.picked_mono_ns - r.frame.captured_mono_ns) / 1e6, 2)
    latency["frame_age"] = round(age_ms, 2)
    return {
        "camera": r.camera,
        "seq": r.frame.seq,
        "frame": r.frame.index,
        "pts": round(r.frame.pts, 3),
        "captured_at": iso_utc(r.frame.captured_wall),
        "width": r.frame.width,
        "height": r.frame.height,
        "detections": r.detections.to_list(names),
        "dropped_before": dropped_before,
        "latency_ms": latency,
    }


class Sink(Protocol):
    def handle(self, record: dict, result: FrameResult) -> None: ...

    def close(self) -> None: ...


class JsonLinesSink:
    """One compact JSON object per line, flushed per line so a pipe reader sees results as they happen."""

    def __init__(self, path: str | Path | None = None, stream: IO[str] | None = None) -> None:
        self._owned = path is not None
        if path is not None:
            self._stream: IO[str] = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        else:
            self._stream = stream or sys.stdout

    def handle(self, record: dict, result: FrameResult) -> None:
        self._stream.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._stream.flush()

    def close(self) -> None:
        if self._owned:
            self._stream.close()
        else:
            self._stream.flush()
