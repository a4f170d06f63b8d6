"""On a GPU machine: build the fall model's and the default COCO model's FP16 and INT8 engines, validate
them against ONNX Runtime, run every runtime variant (CPU/GPU letterbox, copies/mapped memory), the real
letterbox kernel against the CPU path, an Ultralytics-header engine, and print engine vs end-to-end time.
Skipped as a whole without TensorRT, pycuda and a CUDA device (CI, the development machines).

Run: `pip install -e '.[gpu]'` (or JetPack's TensorRT/pycuda), then `pytest tests/gpu -s`."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import pytest

from app.backends import load_backend
from app.backends.engine_cache import Manifest, manifest_path
from app.backends.plan_file import read_plan, with_header
from app.backends.tensorrt import tensorrt_available
from app.config import ModelConfig
from app.engine.agreement import agreement
from app.engine.builder import BuildOptions, build_engine
from app.engine.calibrate import DEFAULT_RECIPE, YOLOV8_RECIPE, evenly_spaced_frames, quantize
from app.inference.detector import Detector
from app.letterbox import Preprocessor

_OK, _WHY = tensorrt_available()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not _OK, reason=f"GPU suite: {_WHY}")]


@pytest.fixture(scope="module")
def frames(sample_video: Path) -> list[np.ndarray]:
    return [f for _, f in evenly_spaced_frames(sample_video, 250)]


@pytest.fixture(scope="module")
def engine_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("engines")


@pytest.fixture(scope="module")
def fp16_engine(fall_model: Path, frames: list[np.ndarray], engine_dir: Path) -> Path:
    return build_engine(fall_model, engine_dir, BuildOptions("fp16"), frames[1::5])


@pytest.fixture(scope="module")
def reference(fall_model: Path, frames: list[np.ndarray]):
    det = Detector.from_config(ModelConfig(path=str(fall_model), backend="onnxruntime"))
    return [det.detect(f)[0] for f in frames[1::5]]


def _passed(engine: Path) -> Manifest:
    manifest = Manifest.from_json(manifest_path(engine).read_text())
    assert manifest.validation is not None and manifest.validation.passed, manifest.validation
    return manifest


def test_fp16_engine_passes_validation_and_is_chosen_by_auto(fp16_engine: Path, fall_model: Path) -> None:
    m = _passed(fp16_engine)
    print(f"FP16 build {m.build_seconds} s, validation {m.validation}")
    cfg = ModelConfig(path=str(fall_model), engine_dir=str(fp16_engine.parent))
    backend, reason = load_backend(cfg)
    assert backend.name == "tensorrt" and fp16_engine.name in reason
    backend.close()


def test_int8_qdq_engine_passes_its_gate(fall_model: Path, frames: list[np.ndarray], engine_dir: Path) -> None:
    qdq = engine_dir / "default.int8.onnx"
    quantize(fall_model, qdq, frames[0::2][:64], target="tensorrt", **YOLOV8_RECIPE)
    engine = build_engine(qdq, engine_dir, BuildOptions("int8"), frames[1::5])
    m = _passed(engine)
    print(f"INT8 build {m.build_seconds} s, validation {m.validation}")


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_default_coco_model_engines_pass_validation(
    coco_model: Path, frames: list[np.ndarray], engine_dir: Path, precision: str
) -> None:
    """The default model (YOLOv3-tiny COCO, dynamic input) at its configured 416: FP16 from the ONNX, INT8
    from `vigil engine calibrate`'s default recipe (TensorRT Q/DQ file); both validated against ONNX Runtime
    and chosen by `auto` at model.imgsz 416."""
    onnx = coco_model
    if precision == "int8":
        onnx = engine_dir / "coco.int8.onnx"
        quantize(coco_model, onnx, frames[0::2][:64], target="tensorrt", **DEFAULT_RECIPE)
    engine = build_engine(onnx, engine_dir, BuildOptions(precision, imgsz=416), frames[1::5])
    m = _passed(engine)
    print(f"COCO {precision} build {m.build_seconds} s, validation {m.validation}")
    cfg = ModelConfig(path=str(onnx), engine_dir=str(engine_dir), imgsz=416, precision=precision)
    backend, reason = load_backend(cfg)
    assert backend.name == "tensorrt" and engine.name in reason
    backend.close()


@pytest.mark.parametrize(("gpu_preprocess", "zero_copy"), [(True, "off"), (False, "off"), (True, "on"), (False, "on")])
def test_runtime_variants_agree_with_onnxruntime(
    fp16_engine: Path, frames: list[np.ndarray], reference, gpu_preprocess: bool, zero_copy: str
) -> None:
    cfg = ModelConfig(path=str(fp16_engine), backend="tensorrt")
    cfg.tensorrt.gpu_preprocess, cfg.tensorrt.zero_copy = gpu_preprocess, zero_copy
    det = Detector.from_config(cfg)
    assert det.backend.preprocesses_on_device == gpu_preprocess
    got = [det.detect(f)[0] for f in frames[1::5]]
    a = agreement(reference, got)
    print(f"gpu_preprocess={gpu_preprocess} zero_copy={zero_copy}: {a.as_dict()}")
    assert a.f1 >= 0.98
    det.close()


def test_gpu_letterbox_kernel_matches_the_cpu_path(frames: list[np.ndarray]) -> None:
    import cv2
    import pycuda.driver as cuda

    from app.backends.gpu_preprocess import GpuLetterbox

    cuda.init()
    ctx = cuda.Device(0).make_context()
    try:
        kernel = GpuLetterbox(np.float32)
        stream = cuda.Stream()
        for w, h in ((640, 272), (1280, 720), (1920, 1080), (333, 517), (320, 240)):
            image = np.ascontiguousarray(cv2.resize(frames[10], (w, h), interpolation=cv2.INTER_AREA))
            ref, geometry = Preprocessor((640, 640))(image)
            src, dst = cuda.mem_alloc(image.nbytes), cuda.mem_alloc(ref.nbytes)
            cuda.memcpy_htod(src, image)
            kernel.launch(int(src), int(dst), geometry, stream)
            stream.synchronize()
            got = np.empty_like(ref)
            cuda.memcpy_dtoh(got, dst)
            diff = np.abs(got - ref)
            print(f"{w}x{h}: max diff {diff.max() * 255:.3f}/255, differing {np.mean(diff > 1e-6):.4%}")
            assert np.array_equal(got, ref), "the host build is bit-identical; the GPU must be too"
    finally:
        ctx.pop()
        ctx.detach()


def test_ultralytics_header_engine_loads(fp16_engine: Path, tmp_path: Path, frames, reference) -> None:
    plan = read_plan(fp16_engine).plan
    meta = {"names": {0: "Fall Detected", 1: "Walking", 2: "Sitting"}, "stride": 32, "imgsz": [640, 640]}
    headered = tmp_path / "yolo-export.engine"
    headered.write_bytes(with_header(plan, meta))
    det = Detector.from_config(ModelConfig(path=str(headered), backend="tensorrt"))
    assert det.names[0] == "Fall Detected"
    assert agreement(reference, [det.detect(f)[0] for f in frames[1::5]]).f1 >= 0.98
    det.close()


def test_engine_time_vs_end_to_end(fp16_engine: Path, frames: list[np.ndarray]) -> None:
    det = Detector.from_config(ModelConfig(path=str(fp16_engine), backend="tensorrt"))
    det.warmup(10)
    tensors = [det.preprocess(f)[0] for f in frames[:100]]
    engine_ms, total_ms = [], []
    for t in tensors:
        t0 = time.perf_counter()
        det.backend.infer(t)
        engine_ms.append((time.perf_counter() - t0) * 1e3)
    for f in frames[:100]:
        t0 = time.perf_counter()
        det.detect(f)
        total_ms.append((time.perf_counter() - t0) * 1e3)
    e50, t99 = statistics.median(engine_ms), float(np.percentile(total_ms, 99))
    print(f"engine p50 {e50:.2f} ms; detect (stage + kernel + engine + decode) p50 "
          f"{statistics.median(total_ms):.2f} / p99 {t99:.2f} ms; p99/engine p50 {t99 / e50:.2f}x")  # fmt: skip
    assert statistics.median(total_ms) < 100  # sanity only: the numbers belong to `vigil bench --modes engine`
    det.close()


def test_batched_regions_on_the_gpu_match_batch_one(
    coco_model: Path, frames: list[np.ndarray], engine_dir: Path
) -> None:
    """The default model's engine has a profile over batch 1..model.max_batch (4): six crops of three frames run as
    batches of 4 + 2 and give the boxes of six batch-1 calls on the same engine; prints batch-4 vs 4 x batch-1."""
    import cv2

    from app.inference.batch import FrameJob, StillFrame, batch_limit, detect_frames

    engine = build_engine(coco_model, engine_dir, BuildOptions("fp16", imgsz=416, max_batch=4), frames[1::5])
    m = _passed(engine)
    assert m.key.input_shape == (4, 3, 416, 416) and m.builder["profile"][2] == [4, 3, 416, 416]
    cfg = ModelConfig(path=str(engine), backend="tensorrt", max_batch=4)
    cfg.tensorrt.gpu_preprocess = False
    det = Detector.from_config(cfg)
    try:
        assert det.batch_capacity == 4 and batch_limit(det, 4) == 4
        jobs = [FrameJob("cam", StillFrame(cv2.resize(f, (1280, 544))), ((0, 0, 544, 544), (736, 0, 1280, 544)))
                for f in frames[100:130:10]]  # fmt: skip
        batched = detect_frames(det, jobs, max_batch=4)
        single = detect_frames(det, jobs, max_batch=1)
        for a, b in zip(batched, single):
            assert a.error is None and b.error is None and a.detections is not None and b.detections is not None
            assert len(a.detections) == len(b.detections)
            np.testing.assert_allclose(a.detections.xyxy, b.detections.xyxy, atol=0.5)
        tensors = [det.preprocess(f)[0] for f in frames[:4]]
        batch = np.concatenate(tensors)
        one, four = [], []
        for _ in range(20):
            t0 = time.perf_counter()
            for t in tensors:
                det.backend.infer(t)
            one.append(4 / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            det.backend.infer(batch)
            four.append(4 / (time.perf_counter() - t0))
        print(f"COCO fp16 416: batch 4 {statistics.median(four):.0f} inputs/s, 4 x batch 1 "
              f"{statistics.median(one):.0f} inputs/s")  # fmt: skip
    finally:
        det.close()
