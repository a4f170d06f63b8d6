"""The parity rule of the core issue, as one function used by the golden and the live reference tests.

Every reference box needs a match in ours (same class, IoU >= 0.95, |conf diff| <= 0.01) and ours has
no extra box; a box within `edge` of the confidence threshold may be missing or extra on either side.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from support.field_media import video_frames


def iou(a: list[float], b: list[float]) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def parity_problems(
    reference: list[dict],
    ours: list[dict],
    conf_thres: float,
    *,
    min_iou: float = 0.95,
    max_dconf: float = 0.01,
    edge: float = 0.01,
) -> list[str]:
    """Returns human-readable problems; empty means parity holds."""
    problems = []
    used: set[int] = set()
    for ref in sorted(reference, key=lambda d: -d["confidence"]):
        best, best_iou = None, 0.0
        for j, d in enumerate(ours):
            if j in used or d["class_id"] != ref["class_id"]:
                continue
            v = iou(ref["box"], d["box"])
            if v > best_iou:
                best, best_iou = j, v
        if best is not None and best_iou >= min_iou:
            used.add(best)
            dconf = abs(ours[best]["confidence"] - ref["confidence"])
            if dconf > max_dconf:
                problems.append(f"confidence differs by {dconf:.4f} for {ref}")
        elif ref["confidence"] > conf_thres + edge:
            problems.append(f"reference box not found in ours (best IoU {best_iou:.3f}): {ref}")
    for j, d in enumerate(ours):
        if j not in used and d["confidence"] > conf_thres + edge:
            problems.append(f"extra box in ours: {d}")
    return problems


def as_records(det) -> list[dict]:
    return [
        {"class_id": int(c), "confidence": float(s), "box": [float(v) for v in b]}
        for b, s, c in zip(np.asarray(det.xyxy).tolist(), det.confidence.tolist(), det.class_id.tolist())
    ]


def golden_video_frames(golden: dict, video: Path) -> dict[str, np.ndarray]:
    """The sample video frames a golden file's cases name (`bikes.mp4#<index>`), keyed by that name."""
    wanted = {c["image"] for c in golden["cases"]}
    indices = sorted(int(w.split("#")[1]) for w in wanted if w.startswith("bikes.mp4#"))
    return {f"bikes.mp4#{i}": frame for i, frame in zip(indices, video_frames(video, indices))}
