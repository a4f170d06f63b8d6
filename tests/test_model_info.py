from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx_models import end2end_constant_model, wrong_shape_model

from app.backends import BackendError
from app.config import ModelConfig
from app.inference.decode import OutputLayout
from app.inference.detector import Detector
from app.inference.model_info import ModelShapeError


def test_default_model_metadata(default_model: Path) -> None:
    d = Detector.from_config(ModelConfig(path=str(default_model)))
    assert d.names == {0: "Normal", 1: "Fall"}
    assert d.info.input_hw == (640, 640) and d.info.layout is OutputLayout.DENSE and d.info.num_classes == 2


def test_wrong_shape_model_names_the_shape(tmp_path: Path) -> None:
    path = wrong_shape_model(tmp_path / "cls.onnx")
    with pytest.raises(ModelShapeError, match=r"output 'output0' has shape \[1, 10\]"):
        Detector.from_config(ModelConfig(path=str(path)))


def test_missing_and_garbage_model(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="does not exist"):
        Detector.from_config(ModelConfig(path=str(tmp_path / "none.onnx")))
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(BackendError, match="could not load"):
        Detector.from_config(ModelConfig(path=str(junk)))


def test_end2end_model_runs(tmp_path: Path) -> None:
    path = end2end_constant_model(tmp_path / "e2e.onnx", np.array([[16, 16, 48, 48, 0.8, 1], [0, 0, 4, 4, 0.1, 0]]))
    d = Detector.from_config(ModelConfig(path=str(path)))
    assert d.info.layout is OutputLayout.END2END
    det, timings = d.detect(np.zeros((64, 128, 3), np.uint8))
    assert det.class_id.tolist() == [1]
    # 64x128 source letterboxed into 64x64: x scale 2, padded 16 rows top
    np.testing.assert_allclose(det.xyxy[0], [32, 0, 96, 64], atol=1e-3)
    assert timings.total_ms > 0
