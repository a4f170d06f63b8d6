"""Small real ONNX models for fast pipeline tests (the default YOLOv8s takes ~270 ms a frame on 2 cores).

They are genuine ONNX graphs run by ONNX Runtime, shaped like Ultralytics exports (same I/O names,
layouts and metadata), so every code path of the runtime sees what a real export gives it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

NAMES = {0: "person", 1: "fall"}


def _meta(model: onnx.ModelProto, imgsz: int, names: dict[int, str] | None, extra: dict | None = None) -> None:
    props = {"names": str(names or NAMES), "stride": "32", "imgsz": str([imgsz, imgsz]), "task": "detect"}
    props.update(extra or {})
    for k, v in props.items():
        model.metadata_props.add(key=k, value=v)


def _save(graph: onnx.GraphProto, path: Path, imgsz: int, names=None, extra=None) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    _meta(model, imgsz, names, extra)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _constant_model(path: Path, out: np.ndarray, name: str, imgsz: int, extra: dict | None = None) -> Path:
    """A model whose output is `out`; the input is still consumed (x * 0 added), like a real graph."""
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["m"], keepdims=0),
        helper.make_node("Mul", ["m", "zero"], ["z"]),
        helper.make_node("Add", ["const_out", "z"], ["output0"]),
    ]
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, imgsz, imgsz])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(out.shape))],
        initializer=[
            numpy_helper.from_array(out, "const_out"),
            numpy_helper.from_array(np.zeros(1, np.float32), "zero"),
        ],
    )
    return _save(graph, path, imgsz, extra=extra)


def dense_constant_model(path: Path, boxes: np.ndarray, imgsz: int = 64, anchors: int = 16) -> Path:
    """Dense head [1, 4+2, anchors] that always returns `boxes` rows (cx, cy, w, h, s0, s1) in input pixels."""
    out = np.zeros((1, 6, anchors), np.float32)
    out[0, :, : len(boxes)] = np.asarray(boxes, np.float32).T
    return _constant_model(path, out, "dense_const", imgsz)


def end2end_constant_model(path: Path, rows: np.ndarray, imgsz: int = 64, max_det: int = 300) -> Path:
    """NMS-free head [1, max_det, 6]: (x1, y1, x2, y2, score, class) rows, zero-padded."""
    out = np.zeros((1, max_det, 6), np.float32)
    out[0, : len(rows)] = np.asarray(rows, np.float32)
    return _constant_model(path, out, "end2end_const", imgsz, extra={"end2end": "True"})


def wrong_shape_model(path: Path, imgsz: int = 64) -> Path:
    """A classifier-like output [1, 10]: must be rejected at load with its shape named."""
    w = numpy_helper.from_array(np.ones((3, 10), np.float32), "w")
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["pooled"], axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["pooled", "w"], ["output0"]),
    ]
    graph = helper.make_graph(
        nodes,
        "wrong",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, imgsz, imgsz])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 10])],
        initializer=[w],
    )
    return _save(graph, path, imgsz)


def slow_dense_model(path: Path, imgsz: int = 320, channels: int = 48, layers: int = 3) -> Path:
    """A dense-head model with real convolution work (tens of ms on 2 cores), for overload tests.

    Emits one box centred in the input whose score follows the mean brightness of the frame.
    """
    rng = np.random.default_rng(0)
    inits = []
    nodes = []
    prev, cin = "images", 3
    for i in range(layers):
        w = numpy_helper.from_array((rng.standard_normal((channels, cin, 3, 3)) * 0.05).astype(np.float32), f"w{i}")
        inits.append(w)
        nodes.append(helper.make_node("Conv", [prev, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]))
        prev, cin = f"c{i}", channels
    anchors = 16
    base = np.zeros((1, 6, anchors), np.float32)
    base[0, :4, 0] = [imgsz / 2, imgsz / 2, imgsz / 4, imgsz / 4]
    base[0, 4, 0] = 0.9
    inits.append(numpy_helper.from_array(base, "base"))
    inits.append(numpy_helper.from_array(np.zeros((1,), np.float32), "zero"))
    nodes += [
        helper.make_node("ReduceMean", [prev], ["m"], keepdims=0),
        helper.make_node("Mul", ["m", "zero"], ["z"]),
        helper.make_node("Add", ["base", "z"], ["output0"]),
    ]
    graph = helper.make_graph(
        nodes,
        "slow_dense",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, imgsz, imgsz])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 6, anchors])],
        initializer=inits,
    )
    return _save(graph, path, imgsz)
