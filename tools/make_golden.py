#!/usr/bin/env python3
"""Record Ultralytics' own detections of the default model as golden files.

The parity test compares `vigil` against these, so the decode/letterbox logic stays checked even where
ultralytics (and torch) are not installed. Re-run after changing the default model:

    .venv/bin/python tools/make_golden.py
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import cv2

VIDEO_FRAMES = (0, 40, 80, 120, 160, 200, 249)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="engines/fall-detection-yolov8s.onnx")
    ap.add_argument("--video", default="calibration/samples/bikes.mp4")
    ap.add_argument("--out", default="tests/golden/default_model_ultralytics.json")
    args = ap.parse_args()

    os.environ.setdefault("YOLO_OFFLINE", "1")
    import ultralytics
    from ultralytics import YOLO
    from ultralytics.utils import ASSETS

    from app.engine.calibrate import frames_at

    model = YOLO(args.model, task="detect")
    images: dict[str, object] = {name: cv2.imread(str(ASSETS / name)) for name in ("bus.jpg", "zidane.jpg")}
    for idx, frame in frames_at(args.video, VIDEO_FRAMES):
        images[f"bikes.mp4#{idx}"] = frame
    cases = []
    for key, img in images.items():
        r = model.predict(img, conf=0.25, iou=0.7, imgsz=640, verbose=False)[0]
        cases.append(
            {
                "image": key,
                "shape": list(img.shape[:2]),
                "detections": [
                    {"class_id": int(c), "confidence": float(s), "box": [float(v) for v in b]}
                    for b, s, c in zip(r.boxes.xyxy.tolist(), r.boxes.conf.tolist(), r.boxes.cls.tolist())
                ],
            }
        )
    out = {
        "generator": "tools/make_golden.py",
        "ultralytics": ultralytics.__version__,
        "model": Path(args.model).name,
        "conf": 0.25,
        "iou": 0.7,
        "imgsz": 640,
        "cases": cases,
    }
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(
        f"wrote {args.out}: {sum(len(c['detections']) for c in cases)} boxes in {len(cases)} images",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
