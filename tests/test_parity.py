"""Parity with Ultralytics on the default model: golden files always, the live reference when installed."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from support.parity import as_records, golden_video_frames, parity_problems

from app.config import ModelConfig
from app.inference.detector import Detector

GOLDEN = Path(__file__).parent / "golden" / "default_model_ultralytics.json"


def _images(sample_video: Path) -> dict[str, np.ndarray]:
    """The golden file's images that exist here: video frames always, Ultralytics' assets when installed."""
    images = golden_video_frames(json.loads(GOLDEN.read_text()), sample_video)
    try:
        from ultralytics.utils import ASSETS

        for name in ("bus.jpg", "zidane.jpg"):
            images[name] = cv2.imread(str(ASSETS / name))
    except ImportError:
        pass
    return images


@pytest.fixture(scope="module")
def detector(fall_model: Path) -> Detector:
    return Detector.from_config(ModelConfig(path=str(fall_model), conf=0.25, iou=0.7))


def test_golden_parity(detector: Detector, sample_video: Path) -> None:
    golden = json.loads(GOLDEN.read_text())
    images = _images(sample_video)
    checked = 0
    for case in golden["cases"]:
        img = images.get(case["image"])
        if img is None:
            continue
        assert list(img.shape[:2]) == case["shape"], case["image"]
        det, _ = detector.detect(img)
        problems = parity_problems(case["detections"], as_records(det), golden["conf"])
        assert not problems, f"{case['image']}: {problems}"
        checked += 1
    assert checked >= 7, "the sample video frames of the golden file must always be checked"


def test_live_ultralytics_parity(detector: Detector, fall_model: Path, sample_video: Path) -> None:
    ultralytics = pytest.importorskip("ultralytics", reason="the `export` extra brings the reference")
    from ultralytics import YOLO

    ref = YOLO(str(fall_model), task="detect")
    images = _images(sample_video)
    assert {"bus.jpg", "zidane.jpg"} <= images.keys()
    total = 0
    for key, img in images.items():
        r = ref.predict(img, conf=0.25, iou=0.7, imgsz=640, verbose=False)[0]
        reference = [
            {"class_id": int(c), "confidence": float(s), "box": [float(v) for v in b]}
            for b, s, c in zip(r.boxes.xyxy.tolist(), r.boxes.conf.tolist(), r.boxes.cls.tolist())
        ]
        det, _ = detector.detect(img)
        problems = parity_problems(reference, as_records(det), 0.25)
        assert not problems, f"{key} (ultralytics {ultralytics.__version__}): {problems}"
        total += len(reference)
    assert total >= 10
