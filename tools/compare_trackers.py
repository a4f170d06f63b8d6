#!/usr/bin/env python3
"""Is the small IoU tracker as good as ByteTrack on our data? (the MQTT issue asks to measure it)

Runs the default model on every frame of the sample video once (cached), then feeds the *same*
detections to both trackers at the rate a CPU appliance processes (every k-th frame) and compares them
with a reference: ByteTrack on every frame at 25 fps, where tracking is easiest. For each reference
track we count how many ids a tracker used for it (fragmentation) and for each tracker id how many
reference tracks it covered (merges). Needs `pip install trackers` (not a Vigil dependency: it pulls
GUI OpenCV), so run it in a throwaway venv:

    python3 -m venv /tmp/trk && /tmp/trk/bin/pip install -e . trackers
    /tmp/trk/bin/python tools/compare_trackers.py
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from app.tracking.iou_tracker import IouTracker
from app.types import Detections


def load_detections(video: str, cache: Path) -> list[Detections]:
    if not cache.exists():
        cache.parent.mkdir(parents=True, exist_ok=True)
        out = subprocess.run([sys.executable, "-m", "app", "detect", video], capture_output=True, text=True, check=True)
        cache.write_text(out.stdout)
    frames = []
    for line in cache.read_text().splitlines():
        dets = json.loads(line)["detections"]
        frames.append(
            Detections(
                np.array([d["box"] for d in dets], np.float32).reshape(-1, 4),
                np.array([d["confidence"] for d in dets], np.float32),
                np.array([d["class_id"] for d in dets], np.int32),
            )
        )
    return frames


def run_iou(frames: list[Detections], step: int, fps: float) -> tuple[dict, float]:
    tr = IouTracker(max_age_s=2.0)
    ids: dict = {}
    t0 = time.perf_counter()
    for i in range(0, len(frames), step):
        for j, tid in enumerate(tr.update(frames[i], i / fps).tolist()):
            ids[(i, j)] = tid
    return ids, (time.perf_counter() - t0) / max(1, len(frames) // step) * 1000


def run_bytetrack(frames: list[Detections], step: int, fps: float) -> tuple[dict, float]:
    import supervision as sv
    from trackers import ByteTrackTracker

    rate = fps / step
    # Tuned to this model's confidences (0.25-0.75): the defaults (activation 0.7) would ignore most people.
    tr = ByteTrackTracker(
        frame_rate=rate,
        lost_track_buffer=int(2.0 * rate),
        track_activation_threshold=0.3,
        high_conf_det_threshold=0.5,
        minimum_consecutive_frames=1,
    )
    ids: dict = {}
    t0 = time.perf_counter()
    for i in range(0, len(frames), step):
        d = frames[i]
        det = sv.Detections(xyxy=d.xyxy, confidence=d.confidence, class_id=d.class_id, data={"idx": np.arange(len(d))})
        out = tr.update(det)
        for idx, tid in zip(out.data.get("idx", []), out.tracker_id if out.tracker_id is not None else []):
            if tid is not None and tid >= 0:
                ids[(i, int(idx))] = int(tid)
    return ids, (time.perf_counter() - t0) / max(1, len(frames) // step) * 1000


def score(reference: dict, ids: dict) -> dict:
    by_ref: dict[int, set[int]] = defaultdict(set)
    by_id: dict[int, set[int]] = defaultdict(set)
    covered = 0
    for key, tid in ids.items():
        ref = reference.get(key)
        if ref is None:
            continue
        covered += 1
        by_ref[ref].add(tid)
        by_id[tid].add(ref)
    return {
        "detections_tracked": len(ids),
        "matched_to_reference": covered,
        "tracks": len(set(ids.values())),
        "fragmentation": sum(len(v) - 1 for v in by_ref.values()),
        "merges": sum(len(v) - 1 for v in by_id.values()),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--video", default="calibration/samples/bikes.mp4")
    ap.add_argument("--cache", default=".cache/bikes-detections.jsonl")
    ap.add_argument("--fps", type=float, default=25.0)
    args = ap.parse_args()
    frames = load_detections(args.video, Path(args.cache))
    reference, _ = run_bytetrack(frames, 1, args.fps)
    rows = {}
    for step in (5, 8):  # 5 fps and ~3 fps: what the CPU appliance processes
        for name, fn in (("iou", run_iou), ("bytetrack", run_bytetrack)):
            ids, ms = fn(frames, step, args.fps)
            rows[f"{name}@{args.fps / step:.1f}fps"] = {**score(reference, ids), "ms_per_update": round(ms, 3)}
    print(json.dumps({"reference": "ByteTrack on every frame (25 fps)", "frames": len(frames), "results": rows},
                     indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
