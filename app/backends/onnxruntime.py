"""ONNX Runtime backend: the CPU path everywhere, CUDA/TensorRT providers when onnxruntime-gpu has them."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from app.backends.base import Backend, BackendError, TensorSpec

log = logging.getLogger(__name__)

_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
}

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


class OnnxRuntimeBackend(Backend):
    """An ONNX model in an ONNX Runtime session: GPU providers first when allowed and present, then CPU.

    Args:
        path: The ``.onnx`` file.
        threads: Intra-op threads; 0 lets ONNX Runtime use one per physical core.
        spin_wait: Let idle intra-op threads spin (lower latency, busier CPU).
        allow_gpu: Try the TensorRT and CUDA execution providers when onnxruntime-gpu offers them.
    """

    name = "onnxruntime"

    def __init__(self, path: str | Path, *, threads: int = 0, spin_wait: bool = True, allow_gpu: bool = True) -> None:
        self.path = Path(path)
        self.threads = threads
        self.spin_wait = spin_wait
        self.allow_gpu = allow_gpu
        self._session: Any = None  # onnxruntime.InferenceSession once loaded (onnxruntime ships no types)
        self._inputs: list[TensorSpec] = []
        self._outputs: list[TensorSpec] = []
        self._meta: dict[str, str] = {}
        self._input_name = ""
        self._output_names: list[str] = []

    def load(self) -> None:
        """Create the session and read the model's inputs, outputs and metadata.

        Raises:
            BackendError: The file does not exist, ONNX Runtime cannot load it, a tensor has an unsupported
                type, or the model has other than one input.
        """
        import onnxruntime as ort

        if not self.path.is_file():
            raise BackendError(f"model file {self.path} does not exist (run `vigil assets fetch`?)")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.intra_op_num_threads = self.threads  # 0 lets ORT use one thread per physical core
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        # Spinning intra-op threads are ORT's default and measured 3-5% faster here (bench, interleaved
        # rounds); an appliance that runs other services beside Vigil can trade that for idle CPU.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spin_wait else "0")
        available = ort.get_available_providers()
        providers = [p for p in GPU_PROVIDERS if self.allow_gpu and p in available]
        providers.append("CPUExecutionProvider")
        try:
            self._session = ort.InferenceSession(str(self.path), sess_options=opts, providers=providers)
        except Exception as exc:  # ORT raises its own exception types; all mean "cannot load"
            raise BackendError(f"ONNX Runtime could not load {self.path}: {exc}") from exc
        s = self._session
        self._inputs = [TensorSpec(i.name, tuple(i.shape), _dtype(i.type)) for i in s.get_inputs()]
        self._outputs = [TensorSpec(o.name, tuple(o.shape), _dtype(o.type)) for o in s.get_outputs()]
        self._meta = dict(s.get_modelmeta().custom_metadata_map)
        if len(self._inputs) != 1:
            names = [i.name for i in self._inputs]
            raise BackendError(f"{self.path}: expected one image input, the model has {names}")
        self._input_name = self._inputs[0].name
        self._output_names = [o.name for o in self._outputs]
        log.info("onnxruntime %s loaded %s with %s", ort.__version__, self.path, s.get_providers())

    @property
    def inputs(self) -> list[TensorSpec]:
        """The model's single image input (empty before ``load``)."""
        return self._inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        """The model's outputs in model order (empty before ``load``)."""
        return self._outputs

    @property
    def metadata(self) -> dict[str, str]:
        """The model's custom metadata map (Ultralytics writes names, stride, imgsz, task...)."""
        return self._meta

    @property
    def providers(self) -> list[str]:
        """Execution providers of the session in priority order; empty before ``load``."""
        return list(self._session.get_providers()) if self._session is not None else []

    @property
    def runs_on_cpu(self) -> bool:
        """True unless the session runs on a GPU execution provider (CUDA, TensorRT)."""
        return not any(p in GPU_PROVIDERS for p in self.providers)

    def infer(self, batch: np.ndarray) -> list[np.ndarray]:
        """Run the session.

        Args:
            batch: ``(B, 3, H, W)`` RGB 0..1 in the input's dtype (``inputs[0].dtype``); B up to
                ``batch_capacity`` (1 for a model with a fixed batch of 1, any for a dynamic batch axis).

        Returns:
            Every output, in ``outputs`` order.

        Raises:
            BackendError: Called before ``load()``. ONNX Runtime's own errors propagate unchanged.
        """
        if self._session is None:
            raise BackendError("backend used before load()")
        return self._session.run(self._output_names, {self._input_name: batch})

    def close(self) -> None:
        """Drop the session (its memory is freed when the last reference goes)."""
        self._session = None


def _dtype(ort_type: str) -> np.dtype:
    try:
        return np.dtype(_ORT_DTYPES[ort_type])
    except KeyError:
        raise BackendError(f"unsupported tensor type {ort_type}") from None
