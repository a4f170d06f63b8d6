"""`TensorRTBackend` end to end on CPU, over the host-memory emulation of pycuda/TensorRT in
cuda_emulation.py: the real backend code, the real letterbox kernel (host build), the real model (ONNX
Runtime as the "engine"), real frames. Detections must equal the ONNX Runtime CPU path exactly, for every
runtime variant: CPU or GPU letterbox, copies or mapped (zero-copy) memory, FP32 or FP16 input."""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from support.cuda_emulation import Emulator, HostLetterbox

from app.backends.plan_file import with_header
from app.backends.tensorrt import TensorRTBackend, use_zero_copy
from app.config import ModelConfig
from app.engine.calibrate import evenly_spaced_frames
from app.inference.detector import Detector
from app.types import Detections


@pytest.fixture(scope="module")
def frames(sample_video: Path) -> list[np.ndarray]:
    return [f for _, f in evenly_spaced_frames(sample_video, 4)]


@pytest.fixture(scope="module")
def reference(fall_model: Path, frames: list[np.ndarray]) -> list[Detections]:
    det = Detector.from_config(ModelConfig(path=str(fall_model), backend="onnxruntime"))
    return [det.detect(f)[0] for f in frames]


def _engine_file(tmp_path: Path, onnx: Path, half_input: bool = False) -> Path:
    """An "engine" with an Ultralytics-style metadata header, like `yolo export format=engine` writes."""
    meta = dict(ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map)
    path = tmp_path / "model.engine"
    path.write_bytes(with_header(Emulator.plan(onnx, half_input), meta))
    return path


def _same(a: Detections, b: Detections, input_rounding: float = 0.0) -> None:
    """Equal detections; `input_rounding` > 0 when the engine input is FP16 (pixels/255 rounded to half)."""
    assert len(a) == len(b)
    np.testing.assert_array_equal(a.class_id, b.class_id)
    np.testing.assert_allclose(a.xyxy, b.xyxy, atol=1e-3 + 100 * input_rounding)
    np.testing.assert_allclose(a.confidence, b.confidence, atol=1e-5 + input_rounding)


@pytest.mark.parametrize(
    ("gpu_preprocess", "integrated", "half_input"),
    [(True, False, False), (True, True, False), (True, False, True), (False, False, False), (False, True, False)],
    ids=["gpu-letterbox", "gpu-letterbox-zero-copy", "gpu-letterbox-fp16-input", "cpu-letterbox", "cpu-zero-copy"],
)
def test_backend_variants_match_onnxruntime(
    monkeypatch, tmp_path: Path, fall_model: Path, frames, reference, host_kernel,
    gpu_preprocess: bool, integrated: bool, half_input: bool,
) -> None:  # fmt: skip
    emu = Emulator(integrated=integrated)
    emu.install(monkeypatch)
    monkeypatch.setattr("app.backends.gpu_preprocess.GpuLetterbox", lambda dt, **kw: HostLetterbox(host_kernel, dt))
    cfg = ModelConfig(path=str(_engine_file(tmp_path, fall_model, half_input)), backend="tensorrt")
    cfg.tensorrt.gpu_preprocess = gpu_preprocess
    det = Detector.from_config(cfg)
    backend = det.backend
    assert isinstance(backend, TensorRTBackend) and backend.mapped == integrated
    assert backend.preprocesses_on_device == gpu_preprocess
    assert det.names == Detector.from_config(ModelConfig(path=str(fall_model))).names, "header metadata"
    rounding = 3e-3 if half_input else 0.0  # measured: scores within 1.6e-3, boxes within 0.03 px
    for _ in range(2):  # twice: buffers are reused, nothing from the previous frame may leak in
        for frame, ref in zip(frames, reference):
            _same(det.detect(frame)[0], ref, rounding)
    assert emu.context_stack == [], "every push has its pop"
    if gpu_preprocess:
        assert backend._letterbox.launches == emu.executions == 2 * len(frames)
        # one page-locked frame buffer per frame size, reused; nothing per frame
        assert emu.pinned_allocs == 1 + 1 + len(backend.outputs)
    uploads = [n for kind, n in emu.copies if kind == "htod"]
    if integrated:
        assert uploads == [] and emu.mapped_allocs == emu.pinned_allocs, "zero-copy: no copies at all"
    elif gpu_preprocess:
        assert set(uploads) == {frames[0].nbytes}, "the only upload is the uint8 frame"
    else:
        assert set(uploads) == {det.preprocess(frames[0])[0].astype(backend.inputs[0].dtype).nbytes}
    det.close()
    leaked = [m.nbytes for m in emu.device_live.values()]
    assert leaked == [] and emu.contexts_alive == 0, f"close frees device memory ({leaked} B) and the context"


def test_staged_frames_survive_drops_and_overlap(monkeypatch, tmp_path: Path, fall_model: Path, frames, reference,
                                                 host_kernel) -> None:  # fmt: skip
    """The worker drops a staged frame when the ring overwrote it mid-copy; `vigil detect` stages frame n+1
    while frame n is in the engine. Neither may corrupt a frame or grow memory per frame."""
    emu = Emulator()
    emu.install(monkeypatch)
    monkeypatch.setattr("app.backends.gpu_preprocess.GpuLetterbox", lambda dt, **kw: HostLetterbox(host_kernel, dt))
    det = Detector.from_config(ModelConfig(path=str(_engine_file(tmp_path, fall_model)), backend="tensorrt"))
    for _ in range(5):
        det.prepare(frames[0])  # staged, then dropped
    gc.collect()
    ahead = [det.prepare(f)[0] for f in frames]  # all staged before any runs
    for staged, ref in zip(ahead, reference):
        outputs, _ = det.infer(staged)
        _same(det.decode(outputs, staged.geometry)[0], ref)
    allocs = emu.pinned_allocs
    for _ in range(3):
        for f, ref in zip(frames, reference):
            _same(det.detect(f)[0], ref)
    assert emu.pinned_allocs == allocs, "steady state reuses the staging buffers"
    det.close()


def test_gpu_failure_hands_staged_frames_to_onnxruntime(monkeypatch, tmp_path: Path, fall_model: Path, frames,
                                                        reference, host_kernel) -> None:  # fmt: skip
    """`auto` wraps the engine in the failover: a GPU that fails `failover_after` times in a row hands the
    frames it had staged to ONNX Runtime on the same ONNX, which letterboxes them on the host."""
    from app.backends.failover import FailoverBackend
    from app.backends.tensorrt import TensorRTBackend as Trt

    emu = Emulator()
    emu.install(monkeypatch)
    monkeypatch.setattr("app.backends.gpu_preprocess.GpuLetterbox", lambda dt, **kw: HostLetterbox(host_kernel, dt))
    engine = _engine_file(tmp_path, fall_model)
    cfg = ModelConfig(path=str(fall_model))
    monkeypatch.setattr("app.backends.tensorrt.tensorrt_available", lambda: (True, "emulated"))
    monkeypatch.setattr("app.backends.cached_engine", lambda c: engine)
    det = Detector.from_config(cfg)
    assert isinstance(det.backend, FailoverBackend) and isinstance(det.backend.primary, Trt)
    assert det.backend.preprocesses_on_device and "TensorRT engine" in det.backend_reason
    _same(det.detect(frames[0])[0], reference[0])
    emu.fail_executions = True
    for _ in range(cfg.tensorrt.failover_after - 1):
        with pytest.raises(Exception, match="execute_async_v3 failed"):
            det.detect(frames[1])
    _same(det.detect(frames[1])[0], reference[1])  # the failing frame itself is answered by the fallback
    state = det.backend_state()
    assert state.name == "onnxruntime" and state.failovers == 1 and "execute_async_v3" in state.reason
    for f, ref in zip(frames, reference):
        _same(det.detect(f)[0], ref)
    det.close()
    assert emu.context_stack == [] and emu.contexts_alive == 0


def test_zero_copy_setting() -> None:
    assert use_zero_copy("auto", integrated=True) and not use_zero_copy("auto", integrated=False)
    assert use_zero_copy("on", integrated=False) and not use_zero_copy("off", integrated=True)


def _batch_jobs(frames: list[np.ndarray]) -> list:
    """Three upscaled frames with two crops each: six model inputs."""
    import cv2

    from app.inference.batch import FrameJob, StillFrame

    return [FrameJob("cam", StillFrame(cv2.resize(f, (1280, 544))), ((0, 0, 544, 544), (736, 0, 1280, 544)))
            for f in frames[:3]]  # fmt: skip


@pytest.mark.parametrize("gpu_preprocess", [False, True], ids=["cpu-letterbox-batched", "gpu-letterbox-batch-1"])
def test_dynamic_batch_engine_runs_regions_as_batches(monkeypatch, tmp_path: Path, coco_model: Path, frames,
                                                      host_kernel, gpu_preprocess: bool) -> None:  # fmt: skip
    """An engine built with a profile over batch 1..4 (the default model has a dynamic batch axis): with the CPU
    letterbox, six crops go as batches of 4 + 2 into buffers sized for 4 and give ONNX Runtime's batch-1 boxes;
    with the GPU letterbox each staged crop goes alone (batch 1) through the same bound context."""
    from app.inference.batch import batch_limit, detect_frames

    emu = Emulator()
    emu.install(monkeypatch)
    monkeypatch.setattr("app.backends.gpu_preprocess.GpuLetterbox", lambda dt, **kw: HostLetterbox(host_kernel, dt))
    meta = dict(ort.InferenceSession(str(coco_model), providers=["CPUExecutionProvider"]).get_modelmeta()
                .custom_metadata_map)  # fmt: skip
    engine = tmp_path / "coco.engine"
    engine.write_bytes(with_header(Emulator.plan(coco_model, max_batch=4, imgsz=416), meta))
    cfg = ModelConfig(path=str(engine), backend="tensorrt", max_batch=4)
    cfg.tensorrt.gpu_preprocess = gpu_preprocess
    det = Detector.from_config(cfg)
    ref = Detector.from_config(ModelConfig(path=str(coco_model), threads=1))
    try:
        assert det.backend.batch_capacity == 4 and not det.backend.runs_on_cpu
        assert batch_limit(det, 4) == (1 if gpu_preprocess else 4), "batching is on by default on a GPU"
        emu.batches.clear()
        det.warmup(1)
        assert emu.batches == ([1] if gpu_preprocess else [1, 4]), "warm-up runs a full batch where it batches"
        jobs = _batch_jobs(frames)
        emu.batches.clear()
        got = detect_frames(det, jobs, max_batch=4)
        want = detect_frames(ref, jobs, max_batch=1)
        assert emu.batches == ([1] * 6 if gpu_preprocess else [4, 2])
        assert sum(len(o.detections or ()) for o in want) > 0
        for a, b in zip(got, want):
            assert a.error is None and a.detections is not None and b.detections is not None
            _same(a.detections, b.detections, input_rounding=1e-4)
        # a batch-1 call after the batched ones rebinds the context and still gives the detector's boxes
        _same(det.detect(frames[0])[0], ref.detect(frames[0])[0], input_rounding=1e-4)
        with pytest.raises(Exception, match="does not fit"):
            det.backend.infer(np.zeros((5, 3, 416, 416), np.float32))
    finally:
        det.close()
        ref.close()
    assert emu.context_stack == [] and emu.contexts_alive == 0
