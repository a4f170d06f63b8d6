"""Engine (plan) files as written by TensorRT or by Ultralytics' `yolo export format=engine`.

Ultralytics prepends its metadata: a little-endian int32 length, then that many bytes of JSON (names,
stride, imgsz, ...), then the serialized plan. Plain TensorRT rejects such a file, so we split it.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

MAX_HEADER = 1 << 20  # Ultralytics' JSON is a few hundred bytes; a plan never starts with a small length


@dataclass(frozen=True)
class PlanFile:
    """A TensorRT engine file split into the serialized plan and its optional JSON header.

    Attributes:
        plan: The serialized engine, as TensorRT deserializes it.
        metadata: Ultralytics' header (names, stride, imgsz, ...), None when the file had none.
    """

    plan: bytes
    metadata: dict | None  # Ultralytics' header, if the file had one


def split_plan(data: bytes) -> PlanFile:
    """Split Ultralytics' `<int32 little-endian length><JSON>` header off a plan, if it has one.

    Data without a valid header (length out of range, not a JSON object) is returned whole as the plan.
    """
    if len(data) >= 4:
        (n,) = struct.unpack("<i", data[:4])
        if 2 <= n <= MAX_HEADER and len(data) > 4 + n and data[4:5] == b"{":
            try:
                meta = json.loads(data[4 : 4 + n].decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                meta = None
            if isinstance(meta, dict):
                return PlanFile(data[4 + n :], meta)
    return PlanFile(data, None)


def read_plan(path: str | Path) -> PlanFile:
    """Read an engine file and split it (see `split_plan`)."""
    return split_plan(Path(path).read_bytes())


def with_header(plan: bytes, metadata: dict) -> bytes:
    """The Ultralytics layout (used by tests, and to hand our engines to Ultralytics tools)."""
    meta = json.dumps(metadata).encode()
    return struct.pack("<i", len(meta)) + meta + plan
