"""The TensorRT path's own logic on CPU: engine cache keys and manifests, Ultralytics plan headers, I/O
planning against a stand-in of the TensorRT 10 engine API (our logic, not TensorRT's results), and
backend selection/fallback on a machine without TensorRT."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from app.backends import BackendError, load_backend
from app.backends.engine_cache import (
    CacheMiss,
    EngineKey,
    Manifest,
    Validation,
    engine_batch,
    lookup,
    now_iso,
    write_manifest,
)
from app.backends.plan_file import read_plan, split_plan, with_header
from app.backends.tensorrt_io import IoTensor, bind, bind_batch, plan_io, set_addresses
from app.config import ModelConfig

KEY = EngineKey("ab" * 32, "fp16", (1, 3, 640, 640), "8.7", "10.3.0")


def test_key_digest_changes_with_every_field() -> None:
    seen = {KEY.digest()}
    for change in ({"onnx_sha256": "cd" * 32}, {"precision": "int8"}, {"input_shape": (1, 3, 320, 320)},
                   {"compute_capability": "8.6"}, {"tensorrt_version": "10.4.0"}, {"dla_core": 0}):  # fmt: skip
        seen.add(dataclasses.replace(KEY, **change).digest())
    assert len(seen) == 7
    assert KEY.digest() == EngineKey("ab" * 32, "fp16", (1, 3, 640, 640), "8.7", "10.3.0").digest(), "stable"
    assert KEY.filename("yolo").startswith("yolo.fp16.sm87.") and KEY.filename("yolo").endswith(".engine")


def _cached(tmp_path: Path, key: EngineKey = KEY, passed: bool = True) -> Path:
    engine = tmp_path / key.filename("yolo")
    engine.write_bytes(b"plan")
    validation = Validation(passed, "F1@IoU0.5 vs ONNX Runtime", 0.99 if passed else 0.5, 0.98, 200)
    write_manifest(Manifest(key, engine.name, "yolo.onnx", now_iso(), 12.5, {"workspace_mb": 1024}, validation), engine)
    return engine


def test_manifest_round_trip_and_cache_hit(tmp_path: Path) -> None:
    engine = _cached(tmp_path)
    manifest = Manifest.from_json((tmp_path / (engine.name + ".json")).read_text())
    assert manifest.key == KEY and manifest.validation is not None and manifest.validation.passed
    assert json.loads((tmp_path / (engine.name + ".json")).read_text())["key_digest"] == KEY.digest()
    assert lookup(tmp_path, "yolo", KEY) == engine


def test_cache_misses_say_why(tmp_path: Path) -> None:
    with pytest.raises(CacheMiss, match="no engine"):
        lookup(tmp_path, "yolo", KEY)
    engine = tmp_path / KEY.filename("yolo")
    engine.write_bytes(b"plan")
    with pytest.raises(CacheMiss, match="no manifest"):
        lookup(tmp_path, "yolo", KEY)
    (tmp_path / (engine.name + ".json")).write_text("{broken")
    with pytest.raises(CacheMiss, match="unreadable"):
        lookup(tmp_path, "yolo", KEY)
    _cached(tmp_path, passed=False)
    with pytest.raises(CacheMiss, match="did not pass validation"):
        lookup(tmp_path, "yolo", KEY)
    # A manifest whose key differs from the file name's (copied or tampered with) is not trusted.
    other = dataclasses.replace(KEY, tensorrt_version="10.0.1")
    write_manifest(Manifest(other, engine.name, "yolo.onnx", now_iso(), 1.0, {}, Validation(True, "f1", 1, 0.98, 1)),
                   engine)  # fmt: skip
    with pytest.raises(CacheMiss, match=r"tensorrt_version: 10\.0\.1 != 10\.3\.0"):
        lookup(tmp_path, "yolo", KEY)


def test_ultralytics_header_is_split_off(tmp_path: Path) -> None:
    plan = b"\x00\x01ftrt" + bytes(range(256))
    meta = {"stride": 32, "names": {"0": "Normal", "1": "Fall"}, "imgsz": [640, 640]}
    (tmp_path / "u.engine").write_bytes(with_header(plan, meta))
    got = read_plan(tmp_path / "u.engine")
    assert got.plan == plan and got.metadata == meta
    assert split_plan(plan).plan == plan and split_plan(plan).metadata is None, "plain plans pass through"
    fake = (7).to_bytes(4, "little") + b"{notjs}" + b"rest"
    assert split_plan(fake).metadata is None and split_plan(fake).plan == fake


# ---- a stand-in for the TensorRT 10 engine/context API (names and semantics of the real one) --------


class _Trt:
    class TensorIOMode:
        INPUT, OUTPUT = "INPUT", "OUTPUT"

    @staticmethod
    def nptype(dtype):
        return {"FLOAT": np.float32, "HALF": np.float16, "INT32": np.int32}[dtype]


class _Engine:
    def __init__(self, tensors, profile=None) -> None:
        self._t = tensors  # name -> (mode, dtype, shape)
        self._profile = profile or {}

    @property
    def num_io_tensors(self) -> int:
        return len(self._t)

    def get_tensor_name(self, i):
        return list(self._t)[i]

    def get_tensor_mode(self, name):
        return self._t[name][0]

    def get_tensor_dtype(self, name):
        return self._t[name][1]

    def get_tensor_shape(self, name):
        return self._t[name][2]

    def get_tensor_profile_shape(self, name, profile):
        return self._profile[name]


class _Context:
    def __init__(self, out_shapes) -> None:
        self.calls: list[tuple] = []
        self.inputs_set: set[str] = set()
        self._out = out_shapes

    def set_input_shape(self, name, shape):
        self.calls.append(("shape", name, tuple(shape)))
        self.inputs_set.add(name)
        return True

    def get_tensor_shape(self, name):
        assert self.inputs_set, "TensorRT knows output shapes only after every input shape is set"
        return self._out[name]

    def set_tensor_address(self, name, addr):
        self.calls.append(("addr", name, addr))
        return True


def _yolo_engine(dynamic: bool = False) -> _Engine:
    shape = (-1, 3, -1, -1) if dynamic else (1, 3, 640, 640)
    tensors = {
        "images": ("INPUT", "FLOAT", shape),
        "output0": ("OUTPUT", "FLOAT", (1, 6, -1) if dynamic else (1, 6, 8400)),
    }
    profile = {"images": ((1, 3, 320, 320), (1, 3, 640, 640), (1, 3, 1280, 1280))}
    return _Engine(tensors, profile)


def test_io_plan_static_engine() -> None:
    inputs, outputs = plan_io(_yolo_engine(), _Trt)
    assert inputs == [IoTensor("images", True, np.dtype(np.float32), (1, 3, 640, 640))]
    assert outputs[0].name == "output0" and outputs[0].shape == (1, 6, 8400)
    assert inputs[0].nbytes == 640 * 640 * 3 * 4


def test_io_plan_dynamic_engine_resolves_within_the_profile() -> None:
    inputs, outputs = plan_io(_yolo_engine(dynamic=True), _Trt, input_hw=(480, 640))
    assert inputs[0].shape == (1, 3, 480, 640)
    ctx = _Context({"output0": (1, 6, 6300)})
    resolved = bind(ctx, inputs, outputs)
    assert resolved[0].shape == (1, 6, 6300)
    set_addresses(ctx, [*inputs, *resolved], {"images": 0x1000, "output0": 0x2000})
    assert ctx.calls == [("shape", "images", (1, 3, 480, 640)), ("addr", "images", 0x1000), ("addr", "output0", 0x2000)]
    with pytest.raises(BackendError, match="outside its profile"):
        plan_io(_yolo_engine(dynamic=True), _Trt, input_hw=(2000, 2000))


def test_io_plan_dynamic_batch_sizes_buffers_for_max_batch_and_rebinds_smaller_batches() -> None:
    """An engine built with a profile over batch 1..8: buffers for min(model.max_batch, 8), and a smaller batch
    rebinds the context (its outputs are a prefix of the buffers)."""
    tensors = {"images": ("INPUT", "FLOAT", (-1, 3, 416, 416)), "output0": ("OUTPUT", "FLOAT", (-1, 84, 3549))}
    engine = _Engine(tensors, {"images": ((1, 3, 416, 416), (8, 3, 416, 416), (8, 3, 416, 416))})
    inputs, outputs = plan_io(engine, _Trt, max_batch=4)
    assert inputs[0].shape == (4, 3, 416, 416)
    assert plan_io(engine, _Trt, max_batch=32)[0][0].shape == (8, 3, 416, 416), "clamped to the profile"
    assert plan_io(engine, _Trt)[0][0].shape == (1, 3, 416, 416), "batch 1 unless asked"
    ctx = _Context({"output0": (4, 84, 3549)})
    resolved = bind(ctx, inputs, outputs)
    assert resolved[0].shape == (4, 84, 3549)
    ctx._out = {"output0": (2, 84, 3549)}
    assert bind_batch(ctx, inputs[0], resolved, 2) == [(2, 84, 3549)]
    assert ctx.calls[-1] == ("shape", "images", (2, 3, 416, 416))
    with pytest.raises(BackendError, match=r"outside 1\.\.4"):
        bind_batch(ctx, inputs[0], resolved, 5)
    ctx._out = {"output0": (8, 84, 3549)}  # an output larger than its buffer is refused, never written past
    with pytest.raises(BackendError, match="its buffer is"):
        bind_batch(ctx, inputs[0], resolved, 3)


def test_engine_batch_and_key_follow_max_batch(tmp_path: Path, coco_model: Path, tiny_model: Path) -> None:
    """The cache key's input shape is the profile's top: model.max_batch for a dynamic batch axis (so a changed
    max_batch builds another engine), 1 for a model exported with batch 1."""
    from app.engine.builder import profile_range

    assert engine_batch(coco_model, 4) == 4 and engine_batch(coco_model, 1) == 1
    assert engine_batch(tiny_model, 4) == 1
    assert profile_range((-1, 3, -1, -1), 4, 416) == ((1, 3, 416, 416), (4, 3, 416, 416))
    assert profile_range((1, 3, -1, -1), 4, 640) == ((1, 3, 640, 640), (1, 3, 640, 640))
    k4 = dataclasses.replace(KEY, input_shape=(4, 3, 640, 640))
    assert k4.filename("yolo") != KEY.filename("yolo")
    _cached(tmp_path, k4)
    with pytest.raises(CacheMiss, match="no engine"):
        lookup(tmp_path, "yolo", KEY)
    assert lookup(tmp_path, "yolo", k4).is_file()


def test_io_plan_rejects_engines_that_are_not_single_image_detectors() -> None:
    two = _Engine({"a": ("INPUT", "FLOAT", (1, 3, 64, 64)), "b": ("INPUT", "FLOAT", (1, 3, 64, 64)),
                   "o": ("OUTPUT", "FLOAT", (1, 6, 84))})  # fmt: skip
    with pytest.raises(BackendError, match="one image input"):
        plan_io(two, _Trt)
    ints = _Engine({"a": ("INPUT", "INT32", (1, 3, 64, 64)), "o": ("OUTPUT", "FLOAT", (1, 6, 84))})
    with pytest.raises(BackendError, match="expected float32"):
        plan_io(ints, _Trt)
    with pytest.raises(BackendError, match="no device buffer"):
        set_addresses(_Context({}), [IoTensor("x", True, np.dtype(np.float32), (1,))], {})


# ---- selection on a machine without TensorRT (CI) -------------------------------------------------


def test_auto_falls_back_to_onnxruntime_and_says_why(tiny_model: Path) -> None:
    pytest.importorskip("onnxruntime")
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed here: the GPU suite covers selection")
    except ImportError:
        pass
    backend, reason = load_backend(ModelConfig(path=str(tiny_model)))
    assert backend.name == "onnxruntime" and "tensorrt is not installed" in reason


def test_explicit_backends_fail_clearly(tiny_model: Path, tmp_path: Path) -> None:
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"x")
    with pytest.raises(BackendError, match="cannot run the TensorRT engine"):
        load_backend(ModelConfig(path=str(engine), backend="onnxruntime"))
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(BackendError, match="is a TensorRT engine, but tensorrt is not installed"):
            load_backend(ModelConfig(path=str(engine)))
        with pytest.raises(BackendError, match="not installed"):
            load_backend(ModelConfig(path=str(tiny_model), backend="tensorrt"))


def test_agreement_f1_and_confidence_shift() -> None:
    from app.engine.agreement import agreement
    from app.types import Detections

    def dets(rows):
        a = np.asarray(rows, np.float32).reshape(-1, 6)
        return Detections(a[:, :4], a[:, 4], a[:, 5].astype(np.int32))

    ref = [dets([[0, 0, 10, 10, 0.9, 0], [20, 20, 40, 40, 0.8, 1]]), dets([])]
    same = agreement(ref, ref)
    assert same.f1 == 1.0 and same.mean_confidence_shift == 0.0
    shifted = [dets([[1, 1, 10, 10, 0.8, 0], [20, 20, 40, 40, 0.7, 0]]), dets([[5, 5, 9, 9, 0.5, 0]])]
    a = agreement(ref, shifted)
    # one match (class 0, IoU 0.81); the second box has the wrong class; one extra box in frame 2
    assert a.matched == 1 and a.reference_boxes == 2 and a.candidate_boxes == 3
    assert a.recall == 0.5 and abs(a.precision - 1 / 3) < 1e-9 and abs(a.mean_confidence_shift - 0.1) < 1e-6
    assert agreement([dets([])], [dets([])]).f1 == 1.0


def test_engine_build_without_tensorrt_is_a_clear_error() -> None:
    import subprocess
    import sys

    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    from conftest import REPO

    res = subprocess.run([sys.executable, "-m", "app", "engine", "build", "--frames", "2"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert res.returncode == 2 and "is not installed" in res.stderr and "Traceback" not in res.stderr


class _Flaky:
    """A backend that raises like a CUDA error after `ok` calls (the GPU path's failure, on CPU)."""

    name = "flaky-gpu"

    def __init__(self, ok: int, value: float = 1.0) -> None:
        self.ok, self.calls, self.value, self.closed = ok, 0, value, False
        self.inputs, self.outputs, self.metadata, self.providers = [], [], {}, [self.name]

    def load(self) -> None: ...

    def infer(self, batch):
        self.calls += 1
        if self.calls > self.ok:
            raise RuntimeError("cuMemcpyHtoDAsync failed: an illegal memory access was encountered")
        return [np.full((1, 6, 4), self.value, np.float32)]

    def close(self) -> None:
        self.closed = True


def test_failover_to_the_fallback_after_repeated_failures_and_retry_later(monkeypatch) -> None:
    from app.backends.failover import FailoverBackend

    primary = _Flaky(ok=2)
    fallback = _Flaky(ok=10**9, value=2.0)
    fallback.name = "onnxruntime"
    clock = [1000.0]
    monkeypatch.setattr("app.backends.failover.time.monotonic", lambda: clock[0])
    fresh = _Flaky(ok=10**9, value=3.0)
    b = FailoverBackend(primary, lambda: fallback, max_failures=3, retry_after_s=60, reload_primary=lambda: fresh)
    x = np.zeros((1, 3, 8, 8), np.float32)
    assert b.infer(x)[0][0, 0, 0] == 1.0 and b.infer(x)[0][0, 0, 0] == 1.0
    for _ in range(2):  # two failures are passed on (the worker counts them) ...
        with pytest.raises(RuntimeError, match="illegal memory access"):
            b.infer(x)
    out = b.infer(x)  # ... the third hands over, and this very frame is answered by the fallback
    assert out[0][0, 0, 0] == 2.0 and b.name == "onnxruntime" and b.failovers == 1
    assert "failover #1 to onnxruntime" in b.reason and "illegal memory access" in b.reason
    assert b.infer(x)[0][0, 0, 0] == 2.0, "stays on the fallback until the retry time"
    clock[0] += 61
    assert b.infer(x)[0][0, 0, 0] == 3.0 and b.name == "flaky-gpu", "a reloaded GPU backend is tried again"
    assert primary.closed


def test_build_progress_names_the_phase_not_its_parent() -> None:
    """TensorRT calls phase_start(phase_name, parent_phase, num_steps) (the order in the 10.x/11.x bindings'
    docstring); a monitor with the arguments swapped prints the parent phase, or None, for every phase."""
    import types

    from app.engine.builder import _progress_monitor

    class IProgressMonitor:
        def __init__(self) -> None:
            pass

    said: list[str] = []
    monitor = _progress_monitor(types.SimpleNamespace(IProgressMonitor=IProgressMonitor), said.append)
    monitor.phase_start("Tactic selection", "Building engine", 12)
    assert said == ["  Tactic selection (12 steps)"]
    assert monitor.step_complete("Tactic selection", 0) is True, "False would cancel the build"


def test_engine_input_size_follows_the_model_and_the_stride(fall_model: Path, tmp_path: Path) -> None:
    """The engine cache key uses the size ONNX Runtime would serve: a fixed input as it is, a dynamic one
    at model.imgsz rounded up to the stride (650 -> 672, 700 -> 704, as Ultralytics' check_imgsz)."""
    from support.onnx_models import dynamic_yolov8_model

    from app.backends.engine_cache import engine_input_size

    assert engine_input_size(fall_model, None) == 640
    assert engine_input_size(fall_model, 416) == 640, "a fixed input cannot be resized"
    dynamic = dynamic_yolov8_model(fall_model, tmp_path / "dynamic.onnx")
    assert [engine_input_size(dynamic, s) for s in (None, 650, 700, 672, 1)] == [640, 672, 704, 672, 32]
