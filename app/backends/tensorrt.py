"""TensorRT runtime backend (TensorRT 10 I/O API + pycuda). Imported only when selected: the CPU
appliance never needs tensorrt or pycuda installed.

One CUDA context per worker process, created in `load()` (after spawn: never inherited), pushed and
popped around every use so any thread may call `infer`. Host buffers are page-locked so copies are
asynchronous DMA on the backend's stream.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from app.backends.base import Backend, BackendError, TensorSpec
from app.backends.tensorrt_io import IoTensor, bind, plan_io, set_addresses
from app.engine.plan_file import read_plan

log = logging.getLogger(__name__)


def tensorrt_available() -> tuple[bool, str]:
    """(usable, reason): TensorRT and pycuda importable and a CUDA device present."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False, "tensorrt is not installed (pip install '.[gpu]', or JetPack's python3-libnvinfer)"
    try:
        import pycuda.driver as cuda

        cuda.init()
        if cuda.Device.count() < 1:
            return False, "no CUDA device"
    except Exception as exc:  # ImportError, or a driver error without a GPU
        return False, f"CUDA unavailable: {type(exc).__name__}: {exc}"
    return True, "TensorRT and a CUDA device are present"


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, path: str | Path, *, device: int = 0) -> None:
        self.path = Path(path)
        self.device = device
        self._ctx = None
        self._engine = None
        self._context = None
        self._stream = None
        self._inputs: list[IoTensor] = []
        self._outputs: list[IoTensor] = []
        self._host: dict[str, np.ndarray] = {}
        self._device_mem: dict[str, object] = {}
        self._meta: dict[str, str] = {}

    def load(self) -> None:
        try:
            import pycuda.driver as cuda
            import tensorrt as trt
        except ImportError as exc:
            raise BackendError(f"model.backend tensorrt: {exc.name} is not installed (the `gpu` extra)") from exc
        if not self.path.is_file():
            raise BackendError(f"engine file {self.path} does not exist (build it with `vigil engine build`)")
        plan = read_plan(self.path)
        if plan.metadata:
            self._meta = {k: str(v) for k, v in plan.metadata.items()}
        cuda.init()
        self._ctx = cuda.Device(self.device).make_context()
        try:
            runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            self._engine = runtime.deserialize_cuda_engine(plan.plan)
            if self._engine is None:
                raise BackendError(
                    f"{self.path}: TensorRT could not deserialize the engine (built for another GPU or TensorRT "
                    f"{trt.__version__}?); rebuild it with `vigil engine build`"
                )
            inputs, outputs = plan_io(self._engine, trt)
            self._context = self._engine.create_execution_context()
            self._outputs = bind(self._context, inputs, outputs)
            self._inputs = inputs
            self._stream = cuda.Stream()
            for t in [*self._inputs, *self._outputs]:
                self._host[t.name] = cuda.pagelocked_empty(t.shape, t.dtype)
                self._device_mem[t.name] = cuda.mem_alloc(t.nbytes)
            set_addresses(self._context, [*self._inputs, *self._outputs],
                          {k: int(v) for k, v in self._device_mem.items()})  # fmt: skip
        except BaseException:
            self._ctx.pop()
            self._ctx.detach()
            self._ctx = None
            raise
        self._ctx.pop()
        log.info("TensorRT %s engine %s: inputs %s, outputs %s", trt.__version__, self.path.name,
                 [(t.name, t.shape) for t in self._inputs], [(t.name, t.shape) for t in self._outputs])  # fmt: skip

    @property
    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec(t.name, t.shape, t.dtype) for t in self._inputs]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec(t.name, t.shape, t.dtype) for t in self._outputs]

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self._meta)

    def infer(self, batch: np.ndarray) -> list[np.ndarray]:
        import pycuda.driver as cuda

        if self._ctx is None:
            raise BackendError("the TensorRT backend is not loaded")
        inp = self._inputs[0]
        if batch.shape != inp.shape:
            raise BackendError(f"input batch {batch.shape} does not match the engine's {inp.shape}")
        self._ctx.push()
        try:
            host_in = self._host[inp.name]
            np.copyto(host_in, batch, casting="same_kind")
            cuda.memcpy_htod_async(self._device_mem[inp.name], host_in, self._stream)
            if not self._context.execute_async_v3(self._stream.handle):
                raise BackendError("TensorRT execute_async_v3 failed")
            for t in self._outputs:
                cuda.memcpy_dtoh_async(self._host[t.name], self._device_mem[t.name], self._stream)
            self._stream.synchronize()
        finally:
            self._ctx.pop()
        return [self._host[t.name].astype(np.float32, copy=True) for t in self._outputs]

    def close(self) -> None:
        if self._ctx is None:
            return
        self._ctx.push()
        try:
            for mem in self._device_mem.values():
                mem.free()
            self._device_mem.clear()
            self._context = self._engine = self._stream = None
        finally:
            self._ctx.pop()
            self._ctx.detach()  # drop the context before the process exits
            self._ctx = None
