"""ONNX -> TensorRT engine with the TensorRT 10 Python API, validated against ONNX Runtime before use.

Explicit batch (the only mode since TensorRT 10), an optimization profile when the ONNX input is
dynamic, a timing cache kept next to the engines. Which ONNX is parsed and with which precision flags
(TensorRT 11 is strongly typed) is decided by `precision.plan_precision`.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from app.assets import sha256_file
from app.backends.engine_cache import EngineKey, Manifest, Validation, engine_batch, now_iso, write_manifest
from app.engine.agreement import agreement
from app.engine.precision import PrecisionError, plan_precision

log = logging.getLogger(__name__)

F1_GATE = {"fp32": 0.99, "fp16": 0.98, "int8": 0.95}


class EngineBuildError(RuntimeError):
    """An engine could not be built: TensorRT or pycuda missing, a precision plan refused, a parse or build failure."""


@dataclass(frozen=True)
class BuildOptions:
    """How to build an engine.

    Attributes:
        precision: ``fp32``, ``fp16`` or ``int8`` (int8 needs a Q/DQ ONNX, or the legacy calibrator).
        imgsz: Square input side in pixels for a dynamic ONNX input (the optimisation profile's only shape).
        workspace_mb: TensorRT builder workspace limit in MiB.
        dla_core: Jetson DLA core to build for (with GPU fallback); None builds for the GPU.
        legacy_calibration_dir: Frames for the deprecated implicit INT8 calibrator (TensorRT 10 only).
        max_batch: The optimisation profile covers batch 1..max_batch when the ONNX batch axis is dynamic
            (`model.max_batch`; part of the cache key); a fixed batch stays what it is.
    """

    precision: Literal["fp32", "fp16", "int8"] = "fp16"
    imgsz: int = 640
    workspace_mb: int = 2048
    dla_core: int | None = None
    legacy_calibration_dir: Path | None = None  # frames for the deprecated implicit INT8 calibrator
    max_batch: int = 4  # ModelConfig.max_batch's default, so a default build is what a default config looks up


def _say(msg: str) -> None:
    print(f"vigil engine: {msg}", file=sys.stderr, flush=True)


def build_engine(onnx: Path, engine_dir: Path, opts: BuildOptions, validation_frames: list[np.ndarray]) -> Path:
    """Build a TensorRT engine for this GPU, validate it against ONNX Runtime and write its manifest.

    Progress goes to stderr. The engine is written even when validation fails; the manifest records the
    verdict and the runtime refuses an engine whose validation failed.

    Args:
        onnx: The source model.
        engine_dir: Where the engine, its manifest and the timing cache go (created if missing).
        opts: Precision, input size, workspace, DLA core, legacy calibration frames.
        validation_frames: ``(H, W, 3)`` uint8 BGR frames both runtimes detect on for the F1 gate.

    Returns:
        Path of the engine, named by its cache key (model hash, precision, shape, compute capability,
        TensorRT version, DLA core).

    Raises:
        EngineBuildError: TensorRT or pycuda is missing, the precision cannot be built from this ONNX, the
            parser rejects the model, TensorRT cannot build it, or the legacy calibration folder is empty.
    """
    try:
        import pycuda.driver as cuda
        import tensorrt as trt
    except ImportError as exc:
        raise EngineBuildError(f"{exc.name} is not installed: install the `gpu` extra or use JetPack's") from exc
    cuda.init()
    major, minor = cuda.Device(0).compute_capability()
    trt_major = int(trt.__version__.split(".")[0])
    legacy = opts.legacy_calibration_dir is not None
    try:
        plan = plan_precision(onnx, opts.precision, trt_major, engine_dir, legacy_int8=legacy)
    except PrecisionError as exc:
        raise EngineBuildError(str(exc)) from exc
    _say(plan.note)
    batch = engine_batch(onnx, opts.max_batch)
    key = EngineKey(sha256_file(onnx), opts.precision, (batch, 3, opts.imgsz, opts.imgsz), f"{major}.{minor}",
                    trt.__version__, opts.dla_core)  # fmt: skip
    engine_dir.mkdir(parents=True, exist_ok=True)
    engine_path = engine_dir / key.filename(onnx.stem)
    t0 = time.monotonic()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    typed = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if plan.strongly_typed else 0
    network = builder.create_network(typed)
    parser = trt.OnnxParser(network, logger)
    _say(f"parsing {plan.onnx.name}")
    if not parser.parse_from_file(str(plan.onnx)):  # resolves external weight files too
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineBuildError("the ONNX parser rejected the model:\n  " + "\n  ".join(errors))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, opts.workspace_mb << 20)
    for flag in plan.flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if opts.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = opts.dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    inp = network.get_input(0)
    profile_shapes = None
    if any(d < 0 for d in inp.shape):
        profile = builder.create_optimization_profile()
        # batch 1..max_batch when the batch axis is dynamic (tuned for the largest: batching is what a GPU is for)
        lo, hi = profile_range(tuple(inp.shape), batch, opts.imgsz)
        profile.set_shape(inp.name, lo, hi, hi)
        config.add_optimization_profile(profile)
        profile_shapes = [list(lo), list(hi), list(hi)]
        if plan.legacy_calibrator and hi != lo:  # the implicit calibrator feeds batches of 1
            calibration = builder.create_optimization_profile()
            calibration.set_shape(inp.name, lo, lo, lo)
            config.set_calibration_profile(calibration)
    cache_file = engine_dir / f"timing-sm{major}{minor}-trt{trt.__version__}.cache"
    timing = config.create_timing_cache(cache_file.read_bytes() if cache_file.is_file() else b"")
    config.set_timing_cache(timing, ignore_mismatch=False)
    if hasattr(trt, "IProgressMonitor"):
        config.progress_monitor = _progress_monitor(trt, _say)
    ctx = cuda.Device(0).make_context()  # TensorRT and the calibrator's buffers share it
    try:
        if plan.legacy_calibrator:
            config.int8_calibrator = _legacy_calibrator(trt, cuda, onnx, opts)
        _say(f"building {opts.precision} engine (minutes on a Jetson)")
        serialized = builder.build_serialized_network(network, config)
    finally:
        ctx.pop()
        ctx.detach()
    if serialized is None:
        raise EngineBuildError("TensorRT could not build the engine (see the messages above; out of workspace "
                               f"memory? raise --workspace-mb from {opts.workspace_mb})")  # fmt: skip
    cache_file.write_bytes(memoryview(config.get_timing_cache().serialize()))
    tmp = engine_path.with_suffix(".tmp")
    tmp.write_bytes(memoryview(serialized))
    tmp.replace(engine_path)
    seconds = time.monotonic() - t0
    _say(f"built {engine_path.name} in {seconds:.0f} s; validating against ONNX Runtime")
    validation = validate(onnx, engine_path, opts, validation_frames)
    builder_info = {"workspace_mb": opts.workspace_mb, "imgsz": opts.imgsz, "tensorrt_major": trt_major,
                    "precision_plan": plan.note, "flags": list(plan.flags), "strongly_typed": plan.strongly_typed,
                    "parsed_onnx": plan.onnx.name, "max_batch": batch, "profile": profile_shapes,
                    "legacy_calibration": str(opts.legacy_calibration_dir) if legacy else None}  # fmt: skip
    write_manifest(Manifest(key, engine_path.name, str(onnx), now_iso(), round(seconds, 1), builder_info, validation),
                   engine_path)  # fmt: skip
    verdict = "passed" if validation.passed else "FAILED (the engine will not be used)"
    _say(f"validation {verdict}: {validation.metric} {validation.value:.4f} (gate {validation.threshold})")
    return engine_path


def profile_range(
    dims: tuple[int, ...], max_batch: int, imgsz: int
) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
    """The (min, max) shapes of the optimisation profile for an NCHW input with some dynamic dimension.

    Args:
        dims: The ONNX input's dimensions as the parser reports them (-1 for dynamic).
        max_batch: The largest batch (`engine_batch`).
        imgsz: The square input side, pixels.

    Returns:
        ``(min, max)``: batch 1 and `max_batch` when the batch axis is dynamic (else its fixed size in both), 3
        channels, `imgsz` x `imgsz`.
    """
    fixed = dims[0] if dims and dims[0] > 0 else None
    lo = (fixed or 1, 3, imgsz, imgsz)
    hi = (fixed or max_batch, 3, imgsz, imgsz)
    return lo, hi


def validate(onnx: Path, engine: Path, opts: BuildOptions, frames: list[np.ndarray]) -> Validation:
    """Compare an engine's detections with ONNX Runtime's on the same frames.

    Args:
        onnx: The source model (the reference, run on ONNX Runtime).
        engine: The built engine.
        opts: Gives the precision, whose F1 gate applies (F1_GATE).
        frames: ``(H, W, 3)`` uint8 BGR frames.

    Returns:
        F1 at IoU 0.5 of the engine against ONNX Runtime, and whether it meets the gate.

    Raises:
        BackendError: Either model cannot be loaded.
    """
    from app.config import ModelConfig
    from app.inference.detector import Detector

    ref = Detector.from_config(ModelConfig(path=str(onnx), backend="onnxruntime"))
    cand = Detector.from_config(ModelConfig(path=str(engine), backend="tensorrt"))
    a = agreement([ref.detect(f)[0] for f in frames], [cand.detect(f)[0] for f in frames])
    gate = F1_GATE[opts.precision]
    return Validation(a.f1 >= gate, "F1@IoU0.5 vs ONNX Runtime", a.f1, gate, len(frames), a.as_dict())


def _legacy_calibrator(trt: Any, cuda: Any, onnx: Path, opts: BuildOptions) -> Any:
    from app.engine.calibrate import load_frames
    from app.engine.legacy_calibrator import CalibrationBatches, CalibrationCache, entropy_calibrator

    assert opts.legacy_calibration_dir is not None
    frames = load_frames(opts.legacy_calibration_dir)
    if not frames:
        raise EngineBuildError(f"{opts.legacy_calibration_dir} has no frames (vigil engine calibrate --from-video)")
    hw = (opts.imgsz, opts.imgsz)
    cache = CalibrationCache(opts.legacy_calibration_dir, onnx.stem, sha256_file(onnx), hw)
    _say(f"DEPRECATED implicit INT8 calibration on {len(frames)} frames (cache {cache.path})")
    return entropy_calibrator(trt, cuda, CalibrationBatches(frames, hw), cache)


def _progress_monitor(trt: Any, say: Callable[[str], None]) -> Any:
    class Progress(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._last = 0.0

        def phase_start(  # TensorRT 10 order (bindings docstring)
            self, phase_name: str, parent_phase: str | None, num_steps: int
        ) -> None:
            say(f"  {phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name: str, step: int) -> bool:
            now = time.monotonic()
            if now - self._last > 5:
                self._last = now
                say(f"  {phase_name}: step {step}")
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            pass

    return Progress()
