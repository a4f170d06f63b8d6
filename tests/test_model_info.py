from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from support.onnx_models import NAMES, end2end_constant_model, wrong_shape_model

from app.backends import BackendError
from app.config import ModelConfig
from app.inference.decode import NmsOutputRoles, OutputLayout
from app.inference.detector import Detector
from app.inference.model_info import ModelShapeError


def test_default_model_metadata(fall_model: Path) -> None:
    d = Detector.from_config(ModelConfig(path=str(fall_model)))
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


def efficient_nms_model(
    path: Path, outputs: list[tuple[str, np.ndarray]], imgsz: int = 64, names: dict[int, str] | None = None
) -> Path:
    """An ONNX graph with the I/O of a YOLO export whose EfficientNMS_TRT node is replaced by constants
    (ONNX Runtime cannot run the TensorRT plugin): same names, shapes, dtypes and order as `outputs`."""
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["m"], keepdims=0),
        helper.make_node("Mul", ["m", "zero"], ["z"]),
        helper.make_node("Cast", ["z"], ["zi"], to=TensorProto.INT32),
    ]
    inits = [numpy_helper.from_array(np.zeros(1, np.float32), "zero")]
    infos = []
    for name, arr in outputs:
        is_float = arr.dtype.kind == "f"
        nodes.append(helper.make_node("Add", [f"{name}_const", "z" if is_float else "zi"], [name]))
        inits.append(numpy_helper.from_array(arr, f"{name}_const"))
        elem = TensorProto.FLOAT if is_float else TensorProto.INT32
        infos.append(helper.make_tensor_value_info(name, elem, list(arr.shape)))
    graph = helper.make_graph(
        nodes,
        "efficient_nms_const",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, imgsz, imgsz])],
        infos,
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    props = {"imgsz": str([imgsz, imgsz]), "task": "detect"}
    if names is not None:
        props["names"] = str(names)
    for k, v in props.items():
        model.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def nms_arrays(rows: list[list[float]], k: int = 100, float_classes: bool = False) -> dict[str, np.ndarray]:
    """Plugin-style outputs holding `rows` (x1, y1, x2, y2, score, class) and high-scoring junk after them."""
    r = np.asarray(rows, np.float32).reshape(-1, 6)
    boxes = np.tile(np.array([0, 0, 8, 8], np.float32), (1, k, 1))
    scores = np.full((1, k), 0.99, np.float32)
    classes = np.ones((1, k), np.float32 if float_classes else np.int32)
    boxes[0, : len(r)], scores[0, : len(r)], classes[0, : len(r)] = r[:, :4], r[:, 4], r[:, 5]
    return {"count": np.array([[len(r)]], np.int32), "boxes": boxes, "scores": scores, "classes": classes}


ROWS = [[16, 16, 48, 48, 0.8, 1], [0, 0, 4, 4, 0.1, 0]]


def test_efficient_nms_model_detected_and_runs(tmp_path: Path) -> None:
    a = nms_arrays(ROWS)
    outs = [
        ("num_dets", a["count"]),
        ("det_boxes", a["boxes"]),
        ("det_scores", a["scores"]),
        ("det_classes", a["classes"]),
    ]
    d = Detector.from_config(ModelConfig(path=str(efficient_nms_model(tmp_path / "nms.onnx", outs, names=NAMES))))
    assert d.info.layout is OutputLayout.EFFICIENT_NMS
    assert d.info.output_roles == NmsOutputRoles(count=0, boxes=1, scores=2, classes=3)
    assert d.info.num_classes == 2 and d.names == NAMES
    det, _ = d.detect(np.zeros((64, 128, 3), np.uint8))
    assert det.class_id.tolist() == [1]  # row 2 is under conf; the junk after num_dets is never read
    # the same 64x128 -> 64x64 letterbox as the END2END test above, so the same source box
    np.testing.assert_allclose(det.xyxy[0], [32, 0, 96, 64], atol=1e-3)


def test_efficient_nms_permuted_outputs_without_names(tmp_path: Path) -> None:
    a = nms_arrays(ROWS)
    outs = [("classes", a["classes"]), ("scores", a["scores"]), ("num", a["count"]), ("boxes", a["boxes"])]
    d = Detector.from_config(ModelConfig(path=str(efficient_nms_model(tmp_path / "nms.onnx", outs))))
    assert d.info.output_roles == NmsOutputRoles(count=2, boxes=3, scores=1, classes=0)
    # no names in the metadata: the class count is unknown (0) and ids show as numbers
    assert d.info.num_classes == 0 and d.names == {}
    det, _ = d.detect(np.zeros((64, 64, 3), np.uint8))
    assert det.class_id.tolist() == [1]
    np.testing.assert_allclose(det.xyxy[0], [16, 16, 48, 48], atol=1e-3)


def test_efficient_nms_float_classes_resolved_by_name_at_load(tmp_path: Path) -> None:
    a = nms_arrays(ROWS, float_classes=True)
    outs = [
        ("det_boxes", a["boxes"]),
        ("det_classes", a["classes"]),
        ("num_dets", a["count"]),
        ("det_scores", a["scores"]),
    ]
    d = Detector.from_config(ModelConfig(path=str(efficient_nms_model(tmp_path / "nms.onnx", outs))))
    assert d.info.output_roles == NmsOutputRoles(count=2, boxes=0, scores=3, classes=1)
    det, _ = d.detect(np.zeros((64, 64, 3), np.uint8))
    assert det.class_id.tolist() == [1]


def test_efficient_nms_ambiguous_or_wrong_shapes_fail_at_load(tmp_path: Path) -> None:
    a = nms_arrays(ROWS, float_classes=True)
    outs = [("output0", a["count"]), ("output1", a["boxes"]), ("output2", a["scores"]), ("output3", a["classes"])]
    with pytest.raises(ModelShapeError, match=r"'output2' \[1, 100\] float32, 'output3' \[1, 100\] float32"):
        Detector.from_config(ModelConfig(path=str(efficient_nms_model(tmp_path / "amb.onnx", outs))))
    a = nms_arrays(ROWS)
    outs = [("num_dets", a["count"]), ("det_boxes", a["boxes"]), ("det_scores", a["scores"][:, :50])]
    outs.append(("det_classes", a["classes"]))
    with pytest.raises(ModelShapeError, match=r"'det_scores' \[1, 50\] float32"):
        Detector.from_config(ModelConfig(path=str(efficient_nms_model(tmp_path / "bad.onnx", outs))))
