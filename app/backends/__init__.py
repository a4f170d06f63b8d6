"""Inference runtimes behind one small interface (`Backend`)."""

from __future__ import annotations

import logging
from pathlib import Path

from app.backends.base import Backend, BackendError, TensorSpec

__all__ = ["Backend", "BackendError", "TensorSpec", "create_backend"]

log = logging.getLogger(__name__)


def create_backend(kind: str, path: str | Path, *, threads: int = 0, spin_wait: bool = True) -> tuple[Backend, str]:
    """Returns the backend and the reason it was chosen (logged and shown in stats)."""
    from app.backends.onnxruntime import OnnxRuntimeBackend

    if kind == "onnxruntime":
        return OnnxRuntimeBackend(path, threads=threads, spin_wait=spin_wait), "configured"
    if kind == "auto":
        return OnnxRuntimeBackend(
            path, threads=threads, spin_wait=spin_wait
        ), "auto: ONNX Runtime (TensorRT backend not built in)"
    raise BackendError(f"model.backend: unknown backend {kind!r}")
