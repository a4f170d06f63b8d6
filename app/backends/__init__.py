"""Inference runtimes behind one small interface (`Backend`), and the choice between them."""

from __future__ import annotations

import logging
from pathlib import Path

from app.backends.base import Backend, BackendError, TensorSpec
from app.backends.engine_cache import CacheMiss, cached_engine
from app.config import ModelConfig

__all__ = ["Backend", "BackendError", "TensorSpec", "load_backend", "onnxruntime_backend"]

log = logging.getLogger(__name__)

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


def onnxruntime_backend(cfg: ModelConfig) -> Backend:
    """A loaded ONNX Runtime backend for `cfg.path`, with `cfg.threads` and `cfg.spin_wait`.

    Raises:
        BackendError: the model cannot be loaded.
    """
    from app.backends.onnxruntime import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(cfg.path, threads=cfg.threads, spin_wait=cfg.spin_wait)
    backend.load()
    return backend


def _tensorrt(path: str | Path, cfg: ModelConfig) -> Backend:
    from app.backends.tensorrt import TensorRTBackend

    t = cfg.tensorrt
    backend = TensorRTBackend(path, device=t.device, gpu_preprocess=t.gpu_preprocess, zero_copy=t.zero_copy,
                              max_batch=cfg.max_batch)  # fmt: skip
    backend.load()
    return backend


def load_backend(cfg: ModelConfig) -> tuple[Backend, str]:
    """A loaded backend and the reason it was chosen (logged and shown in stats).

    `auto` falls back to ONNX Runtime on the same model whenever the TensorRT path is unavailable or fails to load.
    """
    path = Path(cfg.path)
    is_engine = path.suffix in ENGINE_SUFFIXES
    if cfg.backend == "onnxruntime":
        if is_engine:
            raise BackendError(f"model.backend onnxruntime cannot run the TensorRT engine {path.name}")
        return onnxruntime_backend(cfg), "configured"
    if cfg.backend == "tensorrt":
        if is_engine:
            return _tensorrt(path, cfg), "configured"
        try:
            return _tensorrt(cached_engine(cfg), cfg), "configured (cached engine)"
        except ImportError as exc:
            raise BackendError(f"model.backend tensorrt: {exc.name} is not installed (the `gpu` extra)") from exc
        except CacheMiss as exc:
            raise BackendError(f"model.backend tensorrt: {exc}; build one with `vigil engine build`") from exc
    from app.backends.tensorrt import tensorrt_available

    ok, why = tensorrt_available()
    if is_engine:
        if not ok:
            raise BackendError(f"{path.name} is a TensorRT engine, but {why}")
        return _tensorrt(path, cfg), "auto: TensorRT engine file"
    if not ok:
        return onnxruntime_backend(cfg), f"auto: ONNX Runtime ({why})"
    try:
        engine = cached_engine(cfg)
    except CacheMiss as miss:
        return onnxruntime_backend(cfg), f"auto: ONNX Runtime (no usable TensorRT engine: {miss})"
    except Exception as exc:  # a CUDA or file error while looking: the CPU path still works
        return onnxruntime_backend(cfg), f"auto: ONNX Runtime (engine lookup failed: {type(exc).__name__}: {exc})"
    try:
        primary = _tensorrt(engine, cfg)
    except BackendError as exc:
        log.error("TensorRT engine %s failed to load, falling back to ONNX Runtime: %s", engine.name, exc)
        return onnxruntime_backend(cfg), f"auto: ONNX Runtime (TensorRT failed to load: {exc})"
    from app.backends.failover import FailoverBackend

    # At run time too: a GPU that keeps failing hands over to ONNX Runtime on the same ONNX, retried later.
    guarded = FailoverBackend(
        primary,
        lambda: onnxruntime_backend(cfg),
        max_failures=cfg.tensorrt.failover_after,
        retry_after_s=cfg.tensorrt.retry_s,
        reload_primary=lambda: _tensorrt(engine, cfg),
    )
    return guarded, f"auto: TensorRT engine {engine.name} (ONNX Runtime on failure)"
