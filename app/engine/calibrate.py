"""INT8 by explicit quantization: a Q/DQ ONNX made with ONNX Runtime's static quantization from
in-domain frames preprocessed exactly like inference. The same Q/DQ model runs on ONNX Runtime's CPU
INT8 kernels and is what TensorRT builds as INT8 (TensorRT 11 has no other INT8 path).

Quantizing the whole YOLO graph collapses its confidences: the detect head (box/DFL decode, the final
concat and sigmoid) needs float range. `exclude` picks what stays float:
- "head": every node of the detect head (the last `/model.N/` module of an Ultralytics export);
- "head-post": only the head's non-Conv nodes and the DFL (faster, less accurate);
- "none": everything quantized (for comparison).
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from app.assets import sha256_file
from app.engine.cpu_features import host_cpu_int8_isa, needs_reduce_range
from app.inference.preprocess import Preprocessor

EXCLUDE_POLICIES = ("head", "head-post", "none")
# Who runs the Q/DQ file. TensorRT takes only signed, symmetric INT8 (zero point 0) and float biases:
# its parser rejects a DequantizeLinear of an int32 bias. ONNX Runtime's CPU kernels fuse Q/DQ into
# QLinearConv only with an int32 bias, and are fastest with uint8 activations (u8s8); "cpu" keeps the
# symmetric grid (uint8 with zero point 128), so both files quantize every tensor to the same levels.
# On x86 without VNNI those u8s8 kernels saturate on 8-bit weights, so "cpu" then gets 7-bit weights
# (reduce_range, app/engine/cpu_features.py). Measured on the default recipe, both splits: F1 0.922 / 0.905
# vs 0.940 / 0.940 with 8-bit ones. uint8 weights (u8u8 kernels, which do not saturate either) kept 0.940 /
# 0.948 but ran 0.84-1.04x FP32 (u8s8: 0.97-1.35x, same runs): no gain over the float model, so not offered.
QUANT_TARGETS = ("tensorrt", "cpu")
# minmax keeps only per-tensor min/max per frame; ORT's entropy/percentile calibrators keep every
# frame's full activations until the end (~GBs per 10 frames for a YOLOv8s at 640): use few frames.
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


@dataclass
class FrameSet:
    """Frames extracted from a video for calibration, and how (kept as calibration/<name>/frames.json)."""

    source: str
    source_sha256: str
    indices: list[int]
    files: list[str]
    created: str


def evenly_spaced_frames(video: str | Path, n: int) -> list[tuple[int, np.ndarray]]:
    """(index, frame) for `n` frames spread evenly over `video` (all of them when it has fewer)."""
    cap = cv2.VideoCapture(str(video))
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    if total <= 0:
        cap.release()
        raise ValueError(f"{video}: cannot read a frame count (not a video file?)")
    want = set(np.linspace(0, total - 1, num=min(n, total)).round().astype(int).tolist())
    out: list[tuple[int, np.ndarray]] = []
    i = 0
    while len(out) < len(want):
        ok, frame = cap.read()
        if not ok:
            break
        if i in want:
            out.append((i, frame))
        i += 1
    cap.release()
    return out


def extract_frames(video: str | Path, n: int, out_dir: str | Path) -> FrameSet:
    """Evenly spaced frames of `video` as PNG into `out_dir`, with a record of which and from what."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files, got = [], []
    for i, frame in evenly_spaced_frames(video, n):
        name = f"frame_{i:06d}.png"
        cv2.imwrite(str(out / name), frame)
        files.append(name)
        got.append(i)
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    fs = FrameSet(str(video), sha256_file(video), got, files, created)
    (out / "frames.json").write_text(json.dumps(asdict(fs), indent=1))
    return fs


def load_frames(directory: str | Path) -> list[np.ndarray]:
    d = Path(directory)
    record = d / "frames.json"
    names = json.loads(record.read_text())["files"] if record.is_file() else sorted(p.name for p in d.glob("*.png"))
    return [img for img in (cv2.imread(str(d / n)) for n in names) if img is not None]


def _module(node_name: str) -> int | None:
    m = re.match(r"^/model\.(\d+)/", node_name)
    return int(m.group(1)) if m else None


def _head_module(model) -> int:
    modules = [m for n in model.graph.node if (m := _module(n.name)) is not None]
    if not modules:
        raise ValueError("cannot find the detect head: not an Ultralytics-style export (no /model.N/ node names)")
    return max(modules)


def head_feeders(model) -> tuple[int, ...]:
    """The modules whose outputs the detect head reads (YOLOv8: 15, 18, 21; YOLO11: 16, 19, 22): the
    feature maps every box and score is computed from, where quantization error costs the most."""
    head = _head_module(model)
    producer = {out: n.name for n in model.graph.node for out in n.output}
    feeders = {
        m
        for n in model.graph.node
        if _module(n.name) == head
        for i in n.input
        if (m := _module(producer.get(i, ""))) is not None and m != head
    }
    return tuple(sorted(feeders))


def head_nodes(model, policy: str) -> list[str]:
    """Names of the nodes that stay float under `policy`."""
    if policy == "none":
        return []
    head = f"/model.{_head_module(model)}/"
    nodes = [n for n in model.graph.node if n.name.startswith(head)]
    if policy == "head":
        return [n.name for n in nodes]
    return [n.name for n in nodes if n.op_type != "Conv" or "/dfl/" in n.name]


# What `vigil engine calibrate` uses unless told otherwise, chosen by measurement (docs/BENCHMARKS.md, INT8):
# convolutions only, percentile calibration, the head, the stem and the head's feeders float.
DEFAULT_RECIPE: dict = {"method": "percentile", "exclude": "head", "conv_only": True, "keep_first_convs": 3,
                        "float_modules": "head-feeders"}  # fmt: skip

CHUNK_FRAMES = 8  # frames per calibration pass: histogram calibrators hold every activation of a pass


class _Reader:
    """Feeds calibration frames to ONNX Runtime, preprocessed exactly like the live pipeline, in ranges
    (`set_range`): ORT then calibrates chunk by chunk and merges, so memory holds one chunk's activations."""

    def __init__(self, input_name: str, input_hw: tuple[int, int], frames: list[np.ndarray]) -> None:
        self._pre = Preprocessor(input_hw)
        self._name = input_name
        self._frames = frames
        self._it = iter(frames)

    def __len__(self) -> int:
        return len(self._frames)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._it = iter(self._frames[start_index:end_index])

    def get_next(self):
        frame = next(self._it, None)
        if frame is None:
            return None
        blob, _ = self._pre(frame)
        return {self._name: blob.copy()}

    def rewind(self) -> None:
        self._it = iter(self._frames)


def chunk_size(n: int, most: int = CHUNK_FRAMES) -> int:
    """The largest chunk <= `most` that divides `n` (ORT's strided calibration needs whole chunks)."""
    return next(c for c in range(min(most, max(n, 1)), 0, -1) if n % c == 0)


def quantize(onnx_in: str | Path, onnx_out: str | Path, frames: list[np.ndarray], *, method: str = "minmax",
             exclude: str = "head", per_channel: bool = True, conv_only: bool = False,
             keep_first_convs: int = 0, float_modules: tuple[int, ...] | str = (), target: str = "tensorrt",
             percentile: float = 99.999, ranges_cache: Path | None = None,
             reduce_range: bool | None = None) -> dict:  # fmt: skip
    """Writes the Q/DQ model for `target` (QUANT_TARGETS); returns the settings (recorded beside it).

    `ranges_cache`: where the calibrated activation ranges are kept; an existing cache is reused instead of
    calibrating again, so the TensorRT and CPU files of one calibration quantize to the same levels.
    `reduce_range` (target "cpu" only): 7-bit weights, for x86 CPUs without VNNI, whose u8s8 kernels saturate
    on 8-bit ones (app/engine/cpu_features.py); None picks it from this machine's CPU flags."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as _quantize_static
    from onnxruntime.quantization.calibrate import CalibrationDataReader

    if not frames and not (ranges_cache and Path(ranges_cache).is_file()):
        raise ValueError("no calibration frames")
    if method not in CALIBRATION_METHODS or exclude not in EXCLUDE_POLICIES or target not in QUANT_TARGETS:
        raise ValueError(
            f"method one of {CALIBRATION_METHODS}, exclude one of {EXCLUDE_POLICIES}, target one of {QUANT_TARGETS}"
        )
    if target == "tensorrt" and reduce_range:
        raise ValueError("reduce_range is for target 'cpu': the TensorRT file keeps 8-bit symmetric weights")
    cpu_choice: dict = {}
    if target == "cpu":
        host = host_cpu_int8_isa()
        cpu_choice = {"reduce_range_auto": reduce_range is None, "build_cpu": host}
        if reduce_range is None:
            reduce_range = needs_reduce_range(host)
    reduce_range = bool(reduce_range)
    model = onnx.load(str(onnx_in))
    inp = model.graph.input[0]
    dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    excluded = head_nodes(model, exclude)
    # The stem sees raw pixels (a range unlike any later layer): quantizing it costs the most accuracy.
    excluded += [n.name for n in model.graph.node if n.op_type == "Conv"][:keep_first_convs]
    # whole modules (/model.N/) whose quantization error measured too costly: "head-feeders", the neck
    # outputs the detect head reads, took F1 vs FP32 from 0.93 to 0.96 on the default model (BENCHMARKS)
    if float_modules == "head-feeders":
        float_modules = head_feeders(model)
    elif isinstance(float_modules, str):
        raise ValueError(f"float_modules: module numbers or 'head-feeders', not {float_modules!r}")
    excluded += [n.name for n in model.graph.node if any(n.name.startswith(f"/model.{m}/") for m in float_modules)]

    class Reader(_Reader, CalibrationDataReader):
        pass

    t0 = time.monotonic()
    options = dict(
        quant_format=QuantFormat.QDQ, per_channel=per_channel, reduce_range=reduce_range,
        activation_type=QuantType.QInt8 if target == "tensorrt" else QuantType.QUInt8, weight_type=QuantType.QInt8,
        calibrate_method={"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                          "percentile": CalibrationMethod.Percentile}[method],
        nodes_to_exclude=excluded,
        op_types_to_quantize=["Conv"] if conv_only else None,
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": target == "cpu",
                       "CalibPercentile": percentile, "CalibStridedMinMax": chunk_size(len(frames))},
        calibration_cache_path=ranges_cache,
    )  # fmt: skip
    # ORT's calibrators print progress to stdout, where `vigil engine calibrate` writes its JSON reports
    with contextlib.redirect_stdout(sys.stderr):
        _quantize_static(str(onnx_in), str(onnx_out), Reader(inp.name, (dims[2], dims[3]), frames), **options)
    settings = {"target": target, "method": method,
                **({"percentile": percentile} if method == "percentile" else {}), "exclude": exclude,
                "excluded_nodes": len(excluded), "per_channel": per_channel,
                "reduce_range": reduce_range, "weight_bits": 7 if reduce_range else 8, **cpu_choice,
                "conv_only": conv_only, "keep_first_convs": keep_first_convs, "float_modules": list(float_modules),
                "calibration_frames": len(frames), "seconds": round(time.monotonic() - t0, 1)}  # fmt: skip
    Path(str(onnx_out) + ".json").write_text(json.dumps(settings, indent=1))
    return settings
