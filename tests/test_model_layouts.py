"""Model heads and input sizes from real exports: which output layout a model has (dense v8, end-to-end,
YOLOv5 with one or two classes, told apart by metadata, row count and values), and dynamic models at an
image size off the stride grid. The YOLOv5 and dynamic models are the default model rewritten with onnx,
so they carry its real predictions and are checked against it on frames of the sample video."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import REPO
from pydantic import ValidationError
from support.onnx_models import (
    NAMES,
    dense_constant_model,
    dynamic_yolov8_model,
    end2end_constant_model,
    rows_constant_model,
    yolov5_style_model,
)

from app.backends import Backend, TensorSpec, onnxruntime_backend
from app.config import ModelConfig
from app.inference.decode import DecodeParams, OutputLayout, YoloDecoder
from app.inference.detector import Detector
from app.inference.model_info import ModelInfo, ModelShapeError, anchor_counts, round_to_stride
from app.types import Detections

FRAMES = (40, 80, 120)  # frames of the sample video where the default model sees people
ONE = {0: "person"}


@pytest.fixture(scope="module")
def frames(sample_video: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(sample_video))
    out = []
    for i in range(max(FRAMES) + 1):
        ok, frame = cap.read()
        assert ok, f"frame {i} of {sample_video}"
        if i in FRAMES:
            out.append(frame)
    cap.release()
    return out


@pytest.fixture(scope="module")
def v5_models(fall_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    d = tmp_path_factory.mktemp("v5")
    return {n: yolov5_style_model(fall_model, d / f"v5style_{n}class.onnx", n) for n in (1, 2)}


@pytest.fixture(scope="module")
def dynamic_model(fall_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return dynamic_yolov8_model(fall_model, tmp_path_factory.mktemp("dyn") / "dynamic.onnx")


@pytest.fixture(scope="module")
def reference(fall_model: Path) -> Detector:
    return Detector.from_config(ModelConfig(path=str(fall_model)))


def assert_same(got: Detections, want: Detections, conf_power: int = 1) -> None:
    assert len(got) == len(want)
    np.testing.assert_allclose(got.xyxy, want.xyxy, rtol=0, atol=1e-3)
    np.testing.assert_allclose(got.confidence, want.confidence**conf_power, rtol=1e-5, atol=1e-6)


# ---- which layout ---------------------------------------------------------------------------------


def test_layout_of_the_default_dense_v8_model(reference: Detector) -> None:
    assert reference.info.layout is OutputLayout.DENSE and reference.info.num_classes == 2


def test_layout_of_yolov5_one_and_two_class_exports(v5_models: dict[int, Path]) -> None:
    one = Detector.from_config(ModelConfig(path=str(v5_models[1])))
    assert one.info.layout is OutputLayout.YOLOV5 and one.info.num_classes == 1 and one.names == ONE
    # [1, 8400, 6] is also the shape of an end-to-end head: the row count and the values decided
    assert "8400 rows is the anchor grid of a 640x640 input" in one.info.layout_reason
    assert "test inference" in one.info.layout_reason
    two = Detector.from_config(ModelConfig(path=str(v5_models[2])))
    assert two.info.layout is OutputLayout.YOLOV5 and two.info.num_classes == 2
    assert two.names == {0: "Normal", 1: "Fall"}


def test_layout_of_end2end_exports_with_and_without_metadata(tmp_path: Path) -> None:
    rows = np.array([[16, 16, 48, 48, 0.8, 1], [0, 0, 4, 4, 0.1, 0]])
    declared = Detector.from_config(ModelConfig(path=str(end2end_constant_model(tmp_path / "e.onnx", rows))))
    assert declared.info.layout is OutputLayout.END2END
    assert declared.info.layout_reason == "metadata declares an end-to-end/NMS export"
    # No end2end/nms metadata (older exports): two class names cannot fit a one-class YOLOv5 head, and 300
    # rows is no anchor grid of a 64x64 input
    bare = Detector.from_config(ModelConfig(path=str(rows_constant_model(tmp_path / "b.onnx", rows, 300, NAMES))))
    assert bare.info.layout is OutputLayout.END2END
    det, _ = bare.detect(np.zeros((64, 64, 3), np.uint8))
    assert det.class_id.tolist() == [1]
    np.testing.assert_allclose(det.xyxy[0], [16, 16, 48, 48], atol=1e-3)
    # One class: the values fit both readings, the row count decides
    one = rows_constant_model(tmp_path / "one.onnx", [[16, 16, 48, 48, 0.8, 0]], 300, ONE)
    assert Detector.from_config(ModelConfig(path=str(one))).info.layout is OutputLayout.END2END


def test_small_one_class_yolov5_head_is_recognised(tmp_path: Path) -> None:
    # 84 rows: the anchor grid of a 64x64 input (8x8 + 4x4 + 2x2); boxes are cx, cy, w, h
    assert 84 in anchor_counts((64, 64), 32) and {8400, 25200} <= anchor_counts((640, 640), 32)
    rows = [[40, 32, 16, 16, 0.9, 0.95], [50, 50, 4, 4, 0.1, 0.9]]
    d = Detector.from_config(ModelConfig(path=str(rows_constant_model(tmp_path / "v5.onnx", rows, 84, ONE))))
    assert d.info.layout is OutputLayout.YOLOV5 and d.info.num_classes == 1
    det, _ = d.detect(np.zeros((64, 64, 3), np.uint8))
    assert det.class_id.tolist() == [0] and det.confidence[0] == pytest.approx(0.855)
    np.testing.assert_allclose(det.xyxy[0], [32, 24, 48, 40], atol=1e-3)


def test_ambiguous_one_class_heads_fail_naming_the_shape_and_the_override(tmp_path: Path) -> None:
    # Values say YOLOv5 (boxes with x2 < x1), 300 rows say end-to-end: refused, not guessed
    rows = [[40, 32, 16, 16, 0.9, 0.95]]
    path = rows_constant_model(tmp_path / "conflict.onnx", rows, 300, ONE)
    with pytest.raises(ModelShapeError, match=r"'output0' has shape \[1, 300, 6\].*disagrees.*model\.layout"):
        Detector.from_config(ModelConfig(path=str(path)))
    d = Detector.from_config(ModelConfig(path=str(path), layout="yolov5"))
    assert d.info.layout is OutputLayout.YOLOV5 and d.info.layout_reason == "model.layout"
    det, _ = d.detect(np.zeros((64, 64, 3), np.uint8))
    np.testing.assert_allclose(det.xyxy[0], [32, 24, 48, 40], atol=1e-3)
    # A symbolic row count (ONNX Runtime reports one only when the graph is really dynamic: a stand-in
    # backend here) and values that fit both readings: nothing tells them apart
    out = np.zeros((1, 300, 6), np.float32)
    out[0, 0] = [16, 16, 48, 48, 0.8, 0]
    backend = RowsBackend(out, ONE)
    with pytest.raises(ModelShapeError, match=r"\[1, N, 6\].*neither metadata, row count nor values.*model\.layout"):
        ModelInfo.from_backend(backend)
    assert ModelInfo.from_backend(backend, layout="end2end").layout is OutputLayout.END2END
    # ... and with rows that only fit YOLOv5, the values decide alone
    out[0, 0] = [40, 32, 16, 16, 0.9, 0.95]
    info = ModelInfo.from_backend(RowsBackend(out, ONE))
    assert info.layout is OutputLayout.YOLOV5 and info.layout_reason.startswith("1 of 300 rows of a test inference")


class RowsBackend(Backend):
    """A backend with a symbolic [1, N, 6] output that returns `out`."""

    name = "rows"

    def __init__(self, out: np.ndarray, names: dict[int, str]) -> None:
        self.out, self.names = out, names

    def load(self) -> None:
        pass

    @property
    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec("images", (1, 3, 64, 64), np.dtype(np.float32))]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec("output0", (1, "N", 6), np.dtype(np.float32))]

    @property
    def metadata(self) -> dict[str, str]:
        return {"names": str(self.names), "stride": "32"}

    def infer(self, batch: np.ndarray) -> list[np.ndarray]:
        assert batch.shape == (1, 3, 64, 64)
        return [self.out]


def test_layout_override_must_fit_the_output(tmp_path: Path, tiny_model: Path) -> None:
    with pytest.raises(ModelShapeError, match=r"model.layout 'end2end' needs an output \[1, N, 6\].*\[1, 6, 16\]"):
        Detector.from_config(ModelConfig(path=str(tiny_model), layout="end2end"))
    assert Detector.from_config(ModelConfig(path=str(tiny_model), layout="dense")).info.layout is OutputLayout.DENSE
    with pytest.raises(ValidationError):
        ModelConfig(layout="yolov8")


def test_yolov5_class_columns_must_fit_the_names(tmp_path: Path) -> None:
    # [1, 84, 7] with three names: 2 class columns as YOLOv5; what a transposed v8 head would give
    rows = [[40, 32, 16, 16, 0.9, 0.95, 0.1]]
    names = {0: "a", 1: "b", 2: "c"}
    path = rows_constant_model(tmp_path / "t.onnx", rows, 84, names)
    with pytest.raises(ModelShapeError, match=r"\[1, 84, 7\].*2 class column.*names 3 classes.*transposed"):
        Detector.from_config(ModelConfig(path=str(path)))


# ---- YOLOv5 decoding against the default model ------------------------------------------------------


def test_yolov5_one_class_matches_the_default_model(
    v5_models: dict[int, Path], reference: Detector, frames: list[np.ndarray]
) -> None:
    """obj = best class score and class score 1: the default model's detections with one class, i.e.
    its class-agnostic NMS, boxes and scores equal."""
    v5 = Detector.from_config(ModelConfig(path=str(v5_models[1])))
    agnostic = YoloDecoder(OutputLayout.DENSE, 2, DecodeParams(agnostic=True))
    total = 0
    for frame in frames:
        got, _ = v5.detect(frame)
        tensor, geometry, _ = reference.prepare(frame)
        want = agnostic(reference.infer(tensor)[0], geometry)
        assert_same(got, want)
        assert set(got.class_id.tolist()) <= {0}
        total += len(got)
    assert total >= 3


def test_yolov5_two_class_matches_the_default_model(
    v5_models: dict[int, Path], reference: Detector, frames: list[np.ndarray]
) -> None:
    """obj = best class score, then both class scores: score = obj * class score = best**2, so at conf
    0.25**2 the same boxes and classes as the default model at 0.25, with its scores squared."""
    v5 = Detector.from_config(ModelConfig(path=str(v5_models[2]), conf=0.25**2))
    total = 0
    for frame in frames:
        got, _ = v5.detect(frame)
        want, _ = reference.detect(frame)
        assert_same(got, want, conf_power=2)
        assert got.class_id.tolist() == want.class_id.tolist()
        total += len(got)
    assert total >= 3


def test_vigil_check_on_a_yolov5_model_says_ok_with_the_layout(v5_models: dict[int, Path]) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "app", "--log-level", "info", "check", "--set", f"model.path={v5_models[1]}",
         "--set", "mqtt.enabled=false"],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("ok:") and "1 classes: person" in res.stdout
    assert "yolov5 head" in res.stderr


# ---- dynamic models and the stride ------------------------------------------------------------------


def test_round_to_stride() -> None:
    assert [round_to_stride(s, 32) for s in (1, 32, 640, 650, 672, 700)] == [32, 32, 640, 672, 672, 704]
    assert round_to_stride(650, 64) == 704


def test_dynamic_model_at_650_runs_at_672(
    dynamic_model: Path, frames: list[np.ndarray], caplog: pytest.LogCaptureFixture
) -> None:
    backend = onnxruntime_backend(ModelConfig(path=str(dynamic_model)))
    assert backend.inputs[0].shape[2:] == ("height", "width")
    assert backend.infer(np.zeros((1, 3, 672, 672), np.float32))[0].shape == (1, 6, 9261)
    backend.close()
    with caplog.at_level(logging.WARNING, logger="app.inference.model_info"):
        at650 = Detector.from_config(ModelConfig(path=str(dynamic_model), imgsz=650))
    assert at650.info.input_hw == (672, 672)
    assert "imgsz 650 is not a multiple of the model's stride 32; using 672" in caplog.text
    at672 = Detector.from_config(ModelConfig(path=str(dynamic_model), imgsz=672))
    total = 0
    for frame in frames:
        got, _ = at650.detect(frame)
        want, _ = at672.detect(frame)
        assert_same(got, want)
        assert got.class_id.tolist() == want.class_id.tolist()
        total += len(got)
    assert total >= 3


def test_dynamic_model_sizes(dynamic_model: Path, caplog: pytest.LogCaptureFixture) -> None:
    backend = onnxruntime_backend(ModelConfig(path=str(dynamic_model)))
    with caplog.at_level(logging.WARNING, logger="app.inference.model_info"):
        assert ModelInfo.from_backend(backend, 700).input_hw == (704, 704)
        assert "imgsz 700 is not a multiple of the model's stride 32; using 704" in caplog.text
        caplog.clear()
        assert ModelInfo.from_backend(backend).input_hw == (640, 640)  # the metadata's imgsz
        assert ModelInfo.from_backend(backend, 320).input_hw == (320, 320)
        assert not caplog.text
    for bad in (0, -32, 100_000):
        with pytest.raises(ModelShapeError, match=rf"imgsz {bad} is not a usable input size"):
            ModelInfo.from_backend(backend, bad)
    backend.close()
    with pytest.raises(ValidationError):
        ModelConfig(imgsz=0)


def test_fixed_model_keeps_its_size(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = dense_constant_model(tmp_path / "fixed.onnx", np.array([[32, 32, 16, 16, 0.9, 0.05]]))
    with caplog.at_level(logging.WARNING, logger="app.inference.model_info"):
        d = Detector.from_config(ModelConfig(path=str(path), imgsz=650))
    assert d.info.input_hw == (64, 64)
    assert "model input is fixed at 64x64; ignoring imgsz=650" in caplog.text


def test_vigil_detect_and_check_on_a_dynamic_model_at_650(
    dynamic_model: Path, frames: list[np.ndarray], tmp_path: Path
) -> None:
    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), frames[1])
    vigil = [sys.executable, "-m", "app"]
    res = subprocess.run(
        [*vigil, "detect", str(image), "--model", str(dynamic_model), "--imgsz", "650"],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    assert "imgsz 650 is not a multiple of the model's stride 32; using 672" in res.stderr
    (record,) = [json.loads(line) for line in res.stdout.splitlines()]
    assert record["detections"]
    res = subprocess.run(
        [*vigil, "check", "--set", f"model.path={dynamic_model}", "--set", "model.imgsz=650",
         "--set", "mqtt.enabled=false", "--set", "model.classes=null"],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "input (672, 672)" in res.stdout
    res = subprocess.run(
        [*vigil, "detect", str(image), "--model", str(dynamic_model), "--imgsz", "100000"],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "imgsz 100000 is not a usable input size" in res.stderr


def test_class_lists_are_read_one_way_for_config_and_requests() -> None:
    from app.inference.detector import match_classes

    names = {0: "person", 1: "bicycle", 2: "car"}
    assert match_classes(["Car", 0, "1", "car", "zebra", "²", "٣"], names) == ((2, 0, 1), ["'zebra'", "'²'", "'٣'"])
    assert match_classes(["7"], {}) == ((7,), [])  # a model without names takes any id
