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


def _constant_model(
    path: Path,
    out: np.ndarray,
    name: str,
    imgsz: int,
    extra: dict | None = None,
    names: dict[int, str] | None = None,
    out_shape: list[int | str] | None = None,
) -> Path:
    """A model whose output is `out`; the input is still consumed (x * 0 added), like a real graph.
    `out_shape` declares the output's shape (symbolic dimensions as strings) when it differs from out's."""
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["m"], keepdims=0),
        helper.make_node("Mul", ["m", "zero"], ["z"]),
        helper.make_node("Add", ["const_out", "z"], ["output0"]),
    ]
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, imgsz, imgsz])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, out_shape or list(out.shape))],
        initializer=[
            numpy_helper.from_array(out, "const_out"),
            numpy_helper.from_array(np.zeros(1, np.float32), "zero"),
        ],
    )
    return _save(graph, path, imgsz, names=names, extra=extra)


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


def rows_constant_model(
    path: Path,
    rows: np.ndarray,
    n: int,
    names: dict[int, str],
    imgsz: int = 64,
    symbolic_rows: bool = False,
) -> Path:
    """A [1, n, C] head that always returns `rows` (zero-padded) and no end2end/nms metadata: an end-to-end
    head or a YOLOv5 head, depending on what the rows hold. `symbolic_rows` declares n as 'N'."""
    rows = np.asarray(rows, np.float32)
    out = np.zeros((1, n, rows.shape[1]), np.float32)
    out[0, : len(rows)] = rows
    shape = [1, "N", rows.shape[1]] if symbolic_rows else None
    return _constant_model(path, out, "rows_const", imgsz, names=names, out_shape=shape)


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


# ---- models derived from the default YOLOv8s (real weights, real predictions) --------------------------


def _static_anchors(model: onnx.ModelProto) -> int:
    return model.graph.output[0].type.tensor_type.shape.dim[2].dim_value


def dynamic_yolov8_model(src: Path, path: Path) -> Path:
    """The default model (a static 640 export) turned into what Ultralytics' `export dynamic=True` gives:
    symbolic batch/height/width on the input and batch/anchors on the output, with the anchor grid and
    strides computed from the feature maps instead of baked in for 640. Run at 672 it gives 9261 anchors;
    at 650 it fails in ONNX Runtime exactly as a real dynamic export does (a Concat of 41 and 42 cells)."""
    m = onnx.load(str(src))
    g = m.graph
    n = _static_anchors(m)
    inits = {i.name: i for i in g.initializer}
    arrays = {name: numpy_helper.to_array(i) for name, i in inits.items()}
    # Reshape targets with the anchor count baked in: -1 instead
    for name, a in arrays.items():
        if a.ndim == 1 and n in a.tolist():
            inits[name].CopyFrom(numpy_helper.from_array(np.where(a == n, -1, a).astype(a.dtype), name))
    grid_consts = [k for k, a in arrays.items() if a.shape == (1, 2, n)]
    stride_consts = [k for k, a in arrays.items() if a.shape == (1, n)]
    assert grid_consts and len(stride_consts) == 1, "not the YOLOv8 detect head this helper knows"
    strides = list(dict.fromkeys(arrays[stride_consts[0]].ravel().tolist()))  # 8, 16, 32 in anchor order
    # The per-level feature maps [1, 4*16+C, h, w]: inputs of the Reshapes to [1, no, -1] that the anchor
    # concatenation takes, in its order
    per_level = {
        node.output[0]: node.input[0]
        for node in g.node
        if node.op_type == "Reshape"
        and node.input[1] in arrays
        and arrays[node.input[1]].tolist()[-1:] == [-1]
        and len(arrays[node.input[1]]) == 3
    }
    concat = next(nd for nd in g.node if nd.op_type == "Concat" and list(nd.input) and set(nd.input) <= set(per_level))
    levels = [per_level[x] for x in concat.input]
    assert len(levels) == len(strides)
    extra = [
        numpy_helper.from_array(np.array(0, np.int64), "dyn_i0"),
        numpy_helper.from_array(np.array(1, np.int64), "dyn_i1"),
        numpy_helper.from_array(np.array(2, np.int64), "dyn_i2"),
        numpy_helper.from_array(np.array(3, np.int64), "dyn_i3"),
        numpy_helper.from_array(np.array([0], np.int64), "dyn_ax0"),
        numpy_helper.from_array(np.array([1], np.int64), "dyn_ax1"),
        numpy_helper.from_array(np.array([1, 1, -1], np.int64), "dyn_row"),
        numpy_helper.from_array(np.array([1, -1], np.int64), "dyn_flat"),
        numpy_helper.from_array(np.array(0.5, np.float32), "dyn_half"),
        numpy_helper.from_array(np.array(0.0, np.float32), "dyn_zero"),
    ]
    new_nodes = []
    grids, stride_rows = [], []
    for i, (feat, s) in enumerate(zip(levels, strides, strict=True)):
        p = f"dyn{i}_"
        extra.append(numpy_helper.from_array(np.array(s, np.float32), p + "s"))
        new_nodes += [
            helper.make_node("Shape", [feat], [p + "shape"]),
            helper.make_node("Gather", [p + "shape", "dyn_i2"], [p + "h"]),
            helper.make_node("Gather", [p + "shape", "dyn_i3"], [p + "w"]),
            helper.make_node("Unsqueeze", [p + "h", "dyn_ax0"], [p + "h1"]),
            helper.make_node("Unsqueeze", [p + "w", "dyn_ax0"], [p + "w1"]),
            helper.make_node("Concat", [p + "h1", p + "w1"], [p + "hw"], axis=0),
            helper.make_node("Range", ["dyn_i0", p + "w", "dyn_i1"], [p + "xi"]),
            helper.make_node("Range", ["dyn_i0", p + "h", "dyn_i1"], [p + "yi"]),
            helper.make_node("Cast", [p + "xi"], [p + "xf"], to=TensorProto.FLOAT),
            helper.make_node("Cast", [p + "yi"], [p + "yf"], to=TensorProto.FLOAT),
            helper.make_node("Add", [p + "xf", "dyn_half"], [p + "x"]),
            helper.make_node("Add", [p + "yf", "dyn_half"], [p + "y"]),
            helper.make_node("Unsqueeze", [p + "x", "dyn_ax0"], [p + "x2"]),  # [1, w]
            helper.make_node("Unsqueeze", [p + "y", "dyn_ax1"], [p + "y2"]),  # [h, 1]
            helper.make_node("Expand", [p + "x2", p + "hw"], [p + "X"]),
            helper.make_node("Expand", [p + "y2", p + "hw"], [p + "Y"]),
            helper.make_node("Reshape", [p + "X", "dyn_row"], [p + "Xr"]),
            helper.make_node("Reshape", [p + "Y", "dyn_row"], [p + "Yr"]),
            helper.make_node("Concat", [p + "Xr", p + "Yr"], [p + "grid"], axis=1),  # [1, 2, h*w], x first
            helper.make_node("Reshape", [p + "X", "dyn_flat"], [p + "Xf"]),
            helper.make_node("Mul", [p + "Xf", "dyn_zero"], [p + "z"]),
            helper.make_node("Add", [p + "z", p + "s"], [p + "strides"]),  # [1, h*w] filled with s
        ]
        grids.append(p + "grid")
        stride_rows.append(p + "strides")
    new_nodes += [
        helper.make_node("Concat", grids, ["dyn_grid"], axis=2),
        helper.make_node("Concat", stride_rows, ["dyn_strides"], axis=1),
    ]
    swap = {**dict.fromkeys(grid_consts, "dyn_grid"), stride_consts[0]: "dyn_strides"}
    first_user = min(i for i, nd in enumerate(g.node) if set(nd.input) & set(swap))
    for nd in g.node:
        for j, x in enumerate(nd.input):
            if x in swap:
                nd.input[j] = swap[x]
    nodes = list(g.node)
    del g.node[:]
    g.node.extend(nodes[:first_user] + new_nodes + nodes[first_user:])
    keep = [i for i in g.initializer if i.name not in swap]
    del g.initializer[:]
    g.initializer.extend(keep + extra)
    for dim, param in zip(g.input[0].type.tensor_type.shape.dim, ("batch", None, "height", "width"), strict=True):
        if param:
            dim.ClearField("dim_value")
            dim.dim_param = param
    for dim, param in zip(g.output[0].type.tensor_type.shape.dim, ("batch", None, "anchors"), strict=True):
        if param:
            dim.ClearField("dim_value")
            dim.dim_param = param
    del g.value_info[:]
    for prop in m.metadata_props:
        if prop.key == "args":
            prop.value = prop.value.replace("'dynamic': False", "'dynamic': True")
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return path


def yolov5_style_model(src: Path, path: Path, n_classes: int) -> Path:
    """A YOLOv5-layout model ([1, N, 5 + classes]: cx, cy, w, h, objectness, class scores) built from the
    default YOLOv8 ONNX by appending nodes, so it carries its real predictions, with the metadata YOLOv5's
    export.py writes (stride and names only). Same logic as /work/shared/field-cases/make_v5style_models.py:
    n_classes 1: objectness = best class score, class score 1 (class 0 'person'); n_classes 2: objectness =
    best class score, then the two class scores (so a detection scores best_score**2)."""
    assert n_classes in (1, 2)
    m = onnx.load(str(src))
    g = m.graph
    n = _static_anchors(m)
    old_out = g.output[0].name  # output0 [1, 6, N]
    g.output.pop()

    def ints(name: str, vals: list[int]) -> onnx.TensorProto:
        return numpy_helper.from_array(np.array(vals, dtype=np.int64), name)

    g.initializer.extend([ints("v5_s0", [0]), ints("v5_s4", [4]), ints("v5_s6", [6]), ints("v5_ax2", [2])])
    if n_classes == 1:
        g.initializer.append(numpy_helper.from_array(np.ones((1, n, 1), np.float32), "v5_ones"))
    reduce_max = (
        helper.make_node("ReduceMax", ["v5_cls"], ["v5_obj"], axes=[2], keepdims=1)
        if m.opset_import[0].version < 18
        else helper.make_node("ReduceMax", ["v5_cls", "v5_ax2"], ["v5_obj"], keepdims=1)
    )
    tail = ["v5_ones"] if n_classes == 1 else ["v5_cls"]
    g.node.extend(
        [
            helper.make_node("Transpose", [old_out], ["v5_t"], perm=[0, 2, 1]),  # [1, N, 6]
            helper.make_node("Slice", ["v5_t", "v5_s0", "v5_s4", "v5_ax2"], ["v5_box"]),
            helper.make_node("Slice", ["v5_t", "v5_s4", "v5_s6", "v5_ax2"], ["v5_cls"]),
            reduce_max,
            helper.make_node("Concat", ["v5_box", "v5_obj", *tail], ["output0_v5"], axis=2),
        ]
    )
    g.output.append(helper.make_tensor_value_info("output0_v5", TensorProto.FLOAT, [1, n, 5 + n_classes]))
    del m.metadata_props[:]
    names = "{0: 'person'}" if n_classes == 1 else "{0: 'Normal', 1: 'Fall'}"
    for k, v in (("stride", "32"), ("names", names)):  # what YOLOv5's export.py writes
        m.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return path


def bright_blob_model(path: Path, imgsz: int = 64, anchors: int = 16) -> Path:
    """Dense head [1, 4+2, anchors] that finds the bright area of the image (red channel above 0.7 after /255):
    anchor 0 is its bounding box as class 0 at 0.9, nothing when no pixel is bright. A moving bright square in a
    clip becomes a moving detection, so tracking and zones see real motion through the real worker."""
    n = imgsz
    f = TensorProto.FLOAT
    nodes = [
        helper.make_node("Slice", ["images", "c0", "c1", "ax1"], ["red"]),  # [1, 1, n, n]
        helper.make_node("Greater", ["red", "thr"], ["hot"]),
        helper.make_node("Cast", ["hot"], ["mask"], to=f),
        helper.make_node("ReduceMax", ["mask"], ["cols"], axes=[2], keepdims=0),  # [1, 1, n]: bright columns
        helper.make_node("ReduceMax", ["mask"], ["rows"], axes=[3], keepdims=0),  # [1, 1, n]: bright rows
        helper.make_node("ReduceMax", ["mask"], ["any"], keepdims=1),  # [1, 1, 1, 1]
        helper.make_node("Reshape", ["any", "shape111"], ["any3"]),
    ]
    for axis, prof in (("x", "cols"), ("y", "rows")):
        nodes += [
            helper.make_node("ArgMax", [prof], [f"{axis}1i"], axis=2, keepdims=1),  # [1, 1, 1]: first bright
            helper.make_node("Slice", [prof, "rev_start", "rev_end", "ax2", "rev_step"], [f"{axis}rev"]),
            helper.make_node("ArgMax", [f"{axis}rev"], [f"{axis}2r"], axis=2, keepdims=1),  # first from the end
            helper.make_node("Cast", [f"{axis}1i"], [f"{axis}1"], to=f),
            helper.make_node("Cast", [f"{axis}2r"], [f"{axis}2rf"], to=f),
            helper.make_node("Sub", ["size", f"{axis}2rf"], [f"{axis}2"]),  # one past the last bright
            helper.make_node("Add", [f"{axis}1", f"{axis}2"], [f"{axis}sum"]),
            helper.make_node("Mul", [f"{axis}sum", "half"], [f"c{axis}"]),
            helper.make_node("Sub", [f"{axis}2", f"{axis}1"], [f"{axis}len"]),
        ]
    nodes += [
        helper.make_node("Mul", ["any3", "s0"], ["score0"]),
        helper.make_node("Mul", ["any3", "s1"], ["score1"]),
        helper.make_node("Concat", ["cx", "cy", "xlen", "ylen", "score0", "score1"], ["box"], axis=1),  # [1, 6, 1]
        helper.make_node("Concat", ["box", "pad"], ["output0"], axis=2),
    ]
    consts = {
        "c0": np.array([0], np.int64), "c1": np.array([1], np.int64), "ax1": np.array([1], np.int64),
        "ax2": np.array([2], np.int64), "rev_start": np.array([-1], np.int64),
        "rev_end": np.array([-(n + 1)], np.int64), "rev_step": np.array([-1], np.int64),
        "thr": np.array(0.7, np.float32), "size": np.array(float(n), np.float32), "half": np.array(0.5, np.float32),
        "shape111": np.array([1, 1, 1], np.int64), "s0": np.array(0.9, np.float32), "s1": np.array(0.05, np.float32),
        "pad": np.zeros((1, 6, anchors - 1), np.float32),
    }  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "bright_blob",
        [helper.make_tensor_value_info("images", f, [1, 3, n, n])],
        [helper.make_tensor_value_info("output0", f, [1, 6, anchors])],
        initializer=[numpy_helper.from_array(v, k) for k, v in consts.items()],
    )
    return _save(graph, path, n)
