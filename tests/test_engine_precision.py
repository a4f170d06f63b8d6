"""What the engine builder parses and with which flags, per precision and TensorRT major (10: builder
flags; 11: strongly typed, precision from the ONNX), the FP16 ONNX conversion it relies on (run for real
on ONNX Runtime against the FP32 model), and the deprecated implicit-INT8 calibrator's own logic."""

from __future__ import annotations

import types
import warnings
from pathlib import Path

import numpy as np
import pytest

from app.assets import sha256_file
from app.config import ModelConfig
from app.engine.agreement import agreement
from app.engine.calibrate import evenly_spaced_frames, quantize
from app.engine.legacy_calibrator import CalibrationBatches, CalibrationCache, entropy_calibrator
from app.engine.precision import PrecisionError, fp16_onnx, is_qdq, plan_precision
from app.inference.detector import Detector
from app.letterbox import Preprocessor


@pytest.fixture(scope="module")
def qdq_model(tiny_model: Path, small_video: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("qdq") / "tiny.int8.onnx"
    quantize(tiny_model, out, [f for _, f in evenly_spaced_frames(small_video, 8)], exclude="none")
    return out


def test_precision_plans_for_tensorrt_10_and_11(tiny_model: Path, qdq_model: Path, tmp_path: Path) -> None:
    assert not is_qdq(tiny_model) and is_qdq(qdq_model)
    p = plan_precision(tiny_model, "fp16", 10, tmp_path)
    assert (p.onnx, p.flags, p.strongly_typed) == (tiny_model, ("FP16",), False)
    p = plan_precision(tiny_model, "fp16", 11, tmp_path)
    assert p.strongly_typed and p.flags == () and p.onnx.parent == tmp_path and ".fp16-" in p.onnx.name
    assert plan_precision(tiny_model, "fp16", 11, tmp_path).onnx == p.onnx, "converted once, then reused"
    p = plan_precision(qdq_model, "int8", 10, tmp_path)
    assert (p.onnx, p.flags, p.strongly_typed, p.legacy_calibrator) == (qdq_model, ("INT8", "FP16"), False, False)
    p = plan_precision(qdq_model, "int8", 11, tmp_path)
    assert (p.onnx, p.flags, p.strongly_typed) == (qdq_model, (), True)
    p = plan_precision(tiny_model, "int8", 10, tmp_path, legacy_int8=True)
    assert p.legacy_calibrator and "deprecated" in p.note
    assert plan_precision(tiny_model, "fp32", 10, tmp_path).flags == ()


def test_impossible_precisions_say_what_to_do(tiny_model: Path, qdq_model: Path, tmp_path: Path) -> None:
    with pytest.raises(PrecisionError, match="vigil engine calibrate"):
        plan_precision(tiny_model, "int8", 10, tmp_path)
    with pytest.raises(PrecisionError, match="TensorRT 11 has no implicit INT8"):
        plan_precision(tiny_model, "int8", 11, tmp_path, legacy_int8=True)
    with pytest.raises(PrecisionError, match="--precision int8"):
        plan_precision(qdq_model, "fp16", 10, tmp_path)
    with pytest.raises(PrecisionError, match="unknown precision"):
        plan_precision(tiny_model, "bf16", 10, tmp_path)


@pytest.mark.slow
def test_fp16_onnx_keeps_float32_io_and_agrees_with_fp32(fall_model: Path, sample_video: Path, tmp_path: Path) -> None:
    """The model TensorRT 11 builds as FP16, run here on ONNX Runtime: same I/O contract as the FP32 model
    (so the runtime binds the same float32 buffers) and the FP16 engine gate's agreement."""
    half = fp16_onnx(fall_model, tmp_path)
    ref = Detector.from_config(ModelConfig(path=str(fall_model), backend="onnxruntime"))
    cand = Detector.from_config(ModelConfig(path=str(half), backend="onnxruntime"))
    assert [(t.shape, t.dtype) for t in cand.backend.inputs] == [(t.shape, t.dtype) for t in ref.backend.inputs]
    assert [(t.shape, t.dtype) for t in cand.backend.outputs] == [(t.shape, t.dtype) for t in ref.backend.outputs]
    assert cand.names == ref.names, "Ultralytics metadata survives the conversion"
    frames = [f for _, f in evenly_spaced_frames(sample_video, 20)]
    a = agreement([ref.detect(f)[0] for f in frames], [cand.detect(f)[0] for f in frames])
    assert a.f1 >= 0.98, a.as_dict()
    assert sha256_file(fall_model) != sha256_file(half)


# ---- deprecated implicit INT8 calibrator --------------------------------------------------------------------


def test_calibration_batches_are_preprocessed_like_inference(small_video: Path) -> None:
    frames = [f for _, f in evenly_spaced_frames(small_video, 7)]
    batches = CalibrationBatches(frames, (64, 64), batch_size=2)
    got = list(batches)
    assert len(got) == len(batches) == 3, "the partial last batch is dropped"
    pre = Preprocessor((64, 64))
    for i, b in enumerate(got):
        assert b.shape == (2, 3, 64, 64) and b.dtype == np.float32 and b.flags.c_contiguous
        assert b.nbytes == batches.nbytes
        np.testing.assert_array_equal(b[1], pre(frames[2 * i + 1])[0][0])


class _FakeCalibratorBase:
    def __init__(self) -> None:
        pass


def test_entropy_calibrator_feeds_every_batch_then_ends_and_keeps_its_cache(small_video: Path, tmp_path: Path) -> None:
    """Only our side of TensorRT's calibrator protocol: the base class and device copies are stand-ins."""
    copies: list[np.ndarray] = []
    cuda = types.SimpleNamespace(mem_alloc=lambda n: 0xD000, memcpy_htod=lambda dst, src: copies.append(src.copy()))
    trt = types.SimpleNamespace(IInt8EntropyCalibrator2=_FakeCalibratorBase)
    frames = [f for _, f in evenly_spaced_frames(small_video, 3)]
    cache = CalibrationCache(tmp_path, "tiny", "ab" * 32, (64, 64))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cal = entropy_calibrator(trt, cuda, CalibrationBatches(frames, (64, 64)), cache)
    assert any(issubclass(w.category, DeprecationWarning) for w in caught)
    assert cal.read_calibration_cache() is None and cal.get_batch_size() == 1
    pointers = [cal.get_batch(["images"]) for _ in range(4)]
    assert pointers == [[0xD000]] * 3 + [None], "three batches, then the end of the data"
    assert len(copies) == 3 and copies[0].shape == (1, 3, 64, 64)
    cal.write_calibration_cache(memoryview(b"TRT-1001-EntropyCalibration2\nimages: 3c010a14"))
    assert cache.path.name == "tiny.abababababab.64x64.trt-calib"
    assert cache.read() == b"TRT-1001-EntropyCalibration2\nimages: 3c010a14"
    other = CalibrationCache(tmp_path, "tiny", "cd" * 32, (64, 64))
    assert other.read() is None, "a cache made for another model is not read back"
