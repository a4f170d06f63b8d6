"""INT8 explicit quantization on CPU: frame extraction records, which nodes stay float, a real Q/DQ model
from ONNX Runtime's static quantization, and the accuracy gate's metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import make_video
from onnx import TensorProto, helper, numpy_helper

from app.engine.calibrate import extract_frames, head_nodes, load_frames, quantize


def _yolo_like(path: Path, imgsz: int = 64) -> Path:
    """Backbone /model.0/ (Conv+SiLU), head /model.1/ (box Conv, DFL Conv, Sigmoid, Concat) -> [1, 6, N]."""
    rng = np.random.default_rng(0)

    def w(name, shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.2).astype(np.float32), name)

    inits = [w("w0", (8, 3, 3, 3)), w("b0", (8,)), w("wb", (4, 8, 1, 1)), w("wd", (4, 4, 1, 1)), w("wc", (2, 8, 1, 1)),
             numpy_helper.from_array(np.array([1, 4, -1], np.int64), "s4"),
             numpy_helper.from_array(np.array([1, 2, -1], np.int64), "s2")]  # fmt: skip
    n = helper.make_node
    nodes = [
        n("Conv", ["images", "w0", "b0"], ["c0"], name="/model.0/conv/Conv", pads=[1, 1, 1, 1], strides=[4, 4]),
        n("Sigmoid", ["c0"], ["s0"], name="/model.0/act/Sigmoid"),
        n("Mul", ["c0", "s0"], ["a0"], name="/model.0/act/Mul"),
        n("Conv", ["a0", "wb"], ["box"], name="/model.1/cv2/Conv"),
        n("Conv", ["box", "wd"], ["dfl"], name="/model.1/dfl/conv/Conv"),
        n("Conv", ["a0", "wc"], ["cls"], name="/model.1/cv3/Conv"),
        n("Sigmoid", ["cls"], ["score"], name="/model.1/Sigmoid"),
        n("Reshape", ["dfl", "s4"], ["b"], name="/model.1/Reshape"),
        n("Reshape", ["score", "s2"], ["sc"], name="/model.1/Reshape_1"),
        n("Concat", ["b", "sc"], ["output0"], name="/model.1/Concat", axis=1),
    ]
    graph = helper.make_graph(
        nodes, "yolo_like", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, imgsz, imgsz])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 6, (imgsz // 4) ** 2])], initializer=inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_head_policies(tmp_path: Path) -> None:
    model = onnx.load(_yolo_like(tmp_path / "m.onnx"))
    head = set(head_nodes(model, "head"))
    assert head == {n.name for n in model.graph.node if n.name.startswith("/model.1/")}
    post = set(head_nodes(model, "head-post"))
    assert "/model.1/dfl/conv/Conv" in post and "/model.1/Sigmoid" in post and "/model.1/cv2/Conv" not in post
    assert head_nodes(model, "none") == []
    model.graph.node[0].name = "conv_without_module_path"
    for node in model.graph.node:
        node.name = node.name.replace("/model.", "/x.")
    with pytest.raises(ValueError, match="detect head"):
        head_nodes(model, "head")


def test_frames_are_extracted_evenly_and_recorded(tmp_path: Path) -> None:
    video = make_video(tmp_path / "v.mp4", frames=40)
    fs = extract_frames(video, 8, tmp_path / "calib")
    assert fs.indices[0] == 0 and fs.indices[-1] == 39 and len(fs.indices) == 8
    record = json.loads((tmp_path / "calib" / "frames.json").read_text())
    assert record["source_sha256"] == fs.source_sha256 and record["files"] == fs.files
    frames = load_frames(tmp_path / "calib")
    assert len(frames) == 8 and frames[0].shape == (120, 160, 3)


def test_quantize_makes_a_qdq_model_that_keeps_the_head_float(tmp_path: Path) -> None:
    import onnxruntime as ort

    src = _yolo_like(tmp_path / "m.onnx")
    frames = [np.random.default_rng(i).integers(0, 255, (48, 64, 3), dtype=np.uint8) for i in range(8)]
    settings = quantize(src, tmp_path / "q.onnx", frames, method="minmax", exclude="head")
    assert settings["excluded_nodes"] == 7 and settings["calibration_frames"] == 8
    q = onnx.load(tmp_path / "q.onnx")
    ops = [n.op_type for n in q.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    # the backbone conv reads dequantized int8 weights; the head's convs keep float weights
    float_weights = {i.name for i in q.graph.initializer if i.data_type == TensorProto.FLOAT}
    assert {"wb", "wd", "wc"} <= float_weights and "w0" not in float_weights
    x = np.random.default_rng(9).random((1, 3, 64, 64), dtype=np.float32)
    a = ort.InferenceSession(str(src)).run(None, {"images": x})[0]
    b = ort.InferenceSession(str(tmp_path / "q.onnx")).run(None, {"images": x})[0]
    assert a.shape == b.shape and np.abs(a - b).mean() < 0.1 * (np.abs(a).mean() + 1e-6)


def _qdq_params(model: onnx.ModelProto) -> list[tuple[str, np.ndarray, np.ndarray, bool]]:
    """(op, scale, zero point, reads an initializer) of every Q/DQ node."""
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return [(n.op_type, inits[n.input[1]], inits[n.input[2]], n.input[0] in inits)
            for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]  # fmt: skip


def test_tensorrt_and_cpu_files_share_one_calibration(tmp_path: Path) -> None:
    """TensorRT builds only signed symmetric INT8 Q/DQ (zero point 0) and rejects int32 bias DQs; ONNX
    Runtime's fast CPU path wants uint8 activations and int32 biases. Both files come from one calibration
    (the ranges cache), so their activation scales differ only by int8's 254 vs uint8's 255 steps."""
    src = _yolo_like(tmp_path / "m.onnx")
    frames = [np.random.default_rng(i).integers(0, 255, (48, 64, 3), dtype=np.uint8) for i in range(6)]
    ranges = tmp_path / "ranges.json"
    quantize(src, tmp_path / "trt.onnx", frames, method="percentile", exclude="head-post", ranges_cache=ranges)
    assert ranges.is_file()
    quantize(src, tmp_path / "cpu.onnx", [], method="percentile", exclude="head-post", target="cpu",
             ranges_cache=ranges)  # fmt: skip
    trt, cpu = onnx.load(tmp_path / "trt.onnx"), onnx.load(tmp_path / "cpu.onnx")
    trt_q = _qdq_params(trt)
    assert trt_q and all(zp.dtype == np.int8 and not zp.any() for _, _, zp, _ in trt_q)
    cpu_q = _qdq_params(cpu)
    act = [(s, zp) for op, s, zp, const in cpu_q if not const]
    assert act and all(zp.dtype == np.uint8 and (zp == 128).all() for _, zp in act)
    assert any(zp.dtype == np.int32 for _, _, zp, const in cpu_q if const), "int32 bias for QLinearConv fusion"
    assert not any(zp.dtype == np.int32 for _, _, zp, _ in trt_q), "TensorRT: the bias stays float"
    assert "b0" in {i.name for i in trt.graph.initializer if i.data_type == TensorProto.FLOAT}
    trt_act = sorted(float(s) for _, s, _, const in trt_q if not const)
    # the same ranges: int8 spreads [-r, r] over 254 steps, uint8 around 128 over 255
    assert [s * 127 / 127.5 for s in trt_act] == pytest.approx(sorted(float(s) for s, _ in act), rel=1e-6)
    with pytest.raises(ValueError, match="no calibration frames"):
        quantize(src, tmp_path / "x.onnx", [], ranges_cache=tmp_path / "missing.json")


def test_calibrate_cli_writes_both_files_and_gates_them(tmp_path: Path) -> None:
    import subprocess
    import sys

    from conftest import REPO

    model = _yolo_like(tmp_path / "m.onnx")
    video = make_video(tmp_path / "v.mp4", frames=30)
    args = [sys.executable, "-m", "app", "engine", "calibrate", "--model", str(model), "--from-video", str(video),
            "--frames", "20", "--name", "site", "--exclude", "head-post", "--keep-first-convs", "0",
            "--min-f1", "0", "--max-shift", "1"]  # fmt: skip
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    res = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    reports = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["target"] for r in reports] == ["tensorrt", "cpu"]
    assert all(r["holdout_frames"] == 4 and r["calibration_frames"] == 16 and r["gate"]["passed"] for r in reports)
    for suffix in (".int8-site.onnx", ".int8-site.cpu.onnx", ".int8-site.ranges.json"):
        assert (tmp_path / f"m{suffix}").is_file(), suffix
    assert json.loads((tmp_path / "calibration" / "site" / "frames.json").read_text())["indices"][0] == 0
    strict = [*args[:-4], "--min-f1", "1.01"]
    res = subprocess.run(strict, cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 1 and "failed the accuracy gate" in res.stderr
