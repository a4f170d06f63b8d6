"""TensorRT runtime backend (TensorRT 10 I/O API + pycuda).

Imported only when selected: the CPU appliance never needs tensorrt or pycuda installed.

One CUDA context per worker process, created in `load()` (after spawn: never inherited), pushed and
popped around every use so any thread may call `infer`. Host buffers are page-locked so copies are
asynchronous DMA on the backend's stream; on an integrated GPU (Jetson) they are mapped into the GPU's
address space instead, and nothing is copied at all.

With `gpu_preprocess` the detector hands over raw frames (`stage` / `infer_frame`): the uint8 BGR frame is
uploaded once and one kernel letterboxes, swaps to RGB, normalises and lays out NCHW on the GPU, so the
host's per-frame work is one copy in and the small copy of the outputs back.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from app.backends.base import Backend, BackendError, StagedFrame, TensorSpec
from app.backends.plan_file import read_plan
from app.backends.tensorrt_io import IoTensor, bind, bind_batch, plan_io, set_addresses
from app.letterbox import LetterboxGeometry

if TYPE_CHECKING:
    from app.backends.gpu_preprocess import GpuLetterbox

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


@dataclass(slots=True)
class _Buffer:
    """A host array and the device address the engine or kernel uses for it.

    Mapped (zero-copy) buffers have no device allocation: the address is the host memory's own GPU mapping.
    """

    host: np.ndarray
    device_ptr: int
    device: Any  # pycuda DeviceAllocation (pycuda is untyped), None when mapped

    def upload(self, stream: Any, count: int | None = None) -> None:
        """Enqueue the host-to-device copy on the pycuda `stream`; a no-op for a mapped buffer.

        `count` elements from the start (a smaller batch than the buffer's); None: all of it.
        """
        if self.device is not None:
            import pycuda.driver as cuda

            cuda.memcpy_htod_async(self.device, self.prefix(count), stream)

    def download(self, stream: Any, count: int | None = None) -> None:
        """Enqueue the device-to-host copy of `count` elements (None: all) on the pycuda `stream`; no-op when mapped."""
        if self.device is not None:
            import pycuda.driver as cuda

            cuda.memcpy_dtoh_async(self.prefix(count), self.device, stream)

    def prefix(self, count: int | None) -> np.ndarray:
        """The first `count` elements of the host array, flat (all of it, in its shape, for None)."""
        return self.host if count is None or count == self.host.size else self.host.reshape(-1)[:count]

    def free(self) -> None:
        """Free the device allocation, if any (the context must be current)."""
        if self.device is not None:
            self.device.free()


class TensorRTBackend(Backend):
    """Runs a serialized TensorRT engine (`.plan`, see `vigil engine build`) on one CUDA device.

    Args:
        path: The engine file written by `vigil engine build` (plan plus Vigil's metadata header).
        device: CUDA device ordinal.
        gpu_preprocess: Letterbox/normalise raw frames on the GPU (`stage` / `infer_frame`) when the
            engine's input is float32 or float16.
        zero_copy: `auto`, `on` or `off`: use mapped host memory instead of device buffers (see
            `use_zero_copy`).
        max_batch: Largest batch per `infer` call when the engine's batch dimension is dynamic (`model.max_batch`,
            clamped to the engine's optimisation profile); buffers are sized for it.
    """

    name = "tensorrt"
    MAX_SPARE_STAGING = 4  # spare page-locked frame buffers kept per frame size

    def __init__(
        self,
        path: str | Path,
        *,
        device: int = 0,
        gpu_preprocess: bool = True,
        zero_copy: str = "auto",
        max_batch: int = 1,
    ) -> None:
        self.path = Path(path)
        self.max_batch = max_batch
        self.device = device
        self.gpu_preprocess = gpu_preprocess
        self.zero_copy = zero_copy
        self.mapped = False
        # pycuda / tensorrt objects (both packages are untyped): the CUDA context, ICudaEngine,
        # IExecutionContext and the stream; None until `load()` and after `close()`.
        self._ctx: Any = None
        self._engine: Any = None
        self._context: Any = None
        self._stream: Any = None
        self._inputs: list[IoTensor] = []
        self._outputs: list[IoTensor] = []
        self._batch = 0  # the batch the context is bound at now
        self._out_shapes: list[tuple[int, ...]] = []  # the outputs' shapes at that batch
        self._buffers: dict[str, _Buffer] = {}
        self._meta: dict[str, str] = {}
        self._letterbox: GpuLetterbox | None = None  # when preprocessing on the GPU
        self._frame_src: dict[tuple[int, ...], Any] = {}  # device copy of a staged frame, per frame size
        self._spare: dict[tuple[int, ...], list[np.ndarray]] = {}
        self._staged: weakref.WeakValueDictionary[int, np.ndarray] = weakref.WeakValueDictionary()

    def load(self) -> None:
        """Create the CUDA context, deserialize the engine and allocate its I/O buffers.

        Raises:
            BackendError: tensorrt or pycuda is missing, the engine file does not exist, or TensorRT cannot
                deserialize it (built for another GPU or TensorRT version).
        """
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
        dev = cuda.Device(self.device)
        integrated = bool(dev.get_attribute(cuda.device_attribute.INTEGRATED))
        self.mapped = use_zero_copy(self.zero_copy, integrated)
        flags = cuda.ctx_flags.SCHED_AUTO | (cuda.ctx_flags.MAP_HOST if self.mapped else 0)
        self._ctx = dev.make_context(flags)
        try:
            runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            self._engine = runtime.deserialize_cuda_engine(plan.plan)
            if self._engine is None:
                raise BackendError(
                    f"{self.path}: TensorRT could not deserialize the engine (built for another GPU or TensorRT "
                    f"{trt.__version__}?); rebuild it with `vigil engine build`"
                )
            inputs, outputs = plan_io(self._engine, trt, max_batch=self.max_batch)
            self._context = self._engine.create_execution_context()
            self._outputs = bind(self._context, inputs, outputs)
            self._inputs = inputs
            self._batch, self._out_shapes = inputs[0].shape[0], [t.shape for t in self._outputs]
            self._stream = cuda.Stream(flags=1)  # non-blocking: no implicit sync with the legacy stream
            for t in [*self._inputs, *self._outputs]:
                self._buffers[t.name] = self._alloc(t.shape, t.dtype)
            set_addresses(self._context, [*self._inputs, *self._outputs],
                          {k: b.device_ptr for k, b in self._buffers.items()})  # fmt: skip
            if self.gpu_preprocess and self._inputs[0].dtype in (np.float32, np.float16):
                from app.backends.gpu_preprocess import GpuLetterbox

                self._letterbox = GpuLetterbox(self._inputs[0].dtype, cache_dir=self.path.parent / ".kernels")
        except BaseException:
            self._release()
            raise
        self._ctx.pop()
        log.info("TensorRT %s engine %s: inputs %s, outputs %s, preprocessing on the %s, %s host memory",
                 trt.__version__, self.path.name, [(t.name, t.shape) for t in self._inputs],
                 [(t.name, t.shape) for t in self._outputs], "GPU" if self._letterbox else "CPU",
                 "mapped (zero-copy)" if self.mapped else "page-locked")  # fmt: skip

    def _alloc(self, shape: tuple[int, ...], dtype: np.dtype) -> _Buffer:
        """Page-locked host memory, and either its GPU mapping or a device buffer of the same size."""
        import pycuda.driver as cuda

        host = self._host(shape, dtype)
        if self.mapped:
            return _Buffer(host, int(cast(Any, host.base).get_device_pointer()), None)
        device = cuda.mem_alloc(host.nbytes)
        return _Buffer(host, int(device), device)

    def _host(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        import pycuda.driver as cuda

        flags = cuda.host_alloc_flags.DEVICEMAP if self.mapped else 0
        return cuda.pagelocked_empty(shape, dtype, mem_flags=flags)

    @property
    def inputs(self) -> list[TensorSpec]:
        """The engine's input tensors (name, shape, dtype); empty before `load()`."""
        return [TensorSpec(t.name, t.shape, t.dtype) for t in self._inputs]

    @property
    def outputs(self) -> list[TensorSpec]:
        """The engine's output tensors (name, shape, dtype); empty before `load()`."""
        return [TensorSpec(t.name, t.shape, t.dtype) for t in self._outputs]

    @property
    def metadata(self) -> dict[str, str]:
        """A copy of the metadata stored in the plan file's header (stringified values)."""
        return dict(self._meta)

    @property
    def providers(self) -> list[str]:
        """One human-readable line: TensorRT, where preprocessing runs, and whether memory is mapped."""
        where = "GPU" if self._letterbox is not None else "CPU"
        return [f"TensorRT (preprocessing on the {where}{', zero-copy' if self.mapped else ''})"]

    @property
    def preprocesses_on_device(self) -> bool:
        """True when the GPU letterbox kernel is loaded, so `infer_frame` takes raw frames."""
        return self._letterbox is not None

    @property
    def batch_capacity(self) -> int:
        """The batch the buffers are sized for: min(`max_batch`, the profile's maximum), or the fixed batch."""
        return self._inputs[0].shape[0] if self._inputs else 1

    @property
    def runs_on_cpu(self) -> bool:
        """False: the engine runs on the GPU (or a DLA)."""
        return False

    def infer(self, batch: np.ndarray) -> list[np.ndarray]:
        """Run one preprocessed batch: `(B, 3, H, W)` in the engine's input dtype, B in 1..`batch_capacity`.

        Returns:
            Host copies of the outputs at batch B, in engine order; FP16 outputs widened to float32.

        Raises:
            BackendError: the backend is not loaded, the shape does not fit, or execution fails.
        """
        self._require_loaded()
        inp = self._inputs[0]
        if batch.shape[1:] != inp.shape[1:] or not 1 <= batch.shape[0] <= inp.shape[0]:
            raise BackendError(f"input batch {batch.shape} does not fit the engine's {inp.shape}")
        self._ctx.push()
        try:
            self._bind_batch(batch.shape[0])
            buf = self._buffers[inp.name]
            np.copyto(buf.prefix(batch.size).reshape(batch.shape), batch, casting="same_kind")
            buf.upload(self._stream, batch.size)
            return self._execute()
        finally:
            self._ctx.pop()

    def _bind_batch(self, n: int) -> None:
        """Bind the context at batch `n` (a no-op when it already is); the context is current."""
        if n != self._batch:
            self._out_shapes = bind_batch(self._context, self._inputs[0], self._outputs, n)
            self._batch = n

    def stage(self, image: np.ndarray, geometry: LetterboxGeometry) -> StagedFrame:
        """One host copy of the frame, into page-locked (or mapped) memory reused across frames."""
        if self._letterbox is None:
            return super().stage(image, geometry)
        spare = self._spare.get(image.shape)
        if spare:
            host = spare.pop()
        else:  # a new frame size, or more frames in flight than before: allocate (needs the context)
            self._require_loaded()
            self._ctx.push()
            try:
                host = self._host(image.shape, np.dtype(np.uint8))
            finally:
                self._ctx.pop()
            self._staged[id(host)] = host
        np.copyto(host, image)
        return StagedFrame(host, geometry)

    def infer_frame(self, frame: StagedFrame) -> list[np.ndarray]:
        """Letterbox the staged `(H, W, 3)` uint8 BGR frame on the GPU and run the engine.

        Falls back to the CPU path of `Backend.infer_frame` without GPU preprocessing; a frame staged by
        another backend is re-staged first. The staging buffer is kept as a spare for the next frame.
        """
        if self._letterbox is None:
            return super().infer_frame(frame)
        self._require_loaded()
        if self._staged.get(id(frame.image)) is not frame.image:  # staged elsewhere (e.g. by a fallback)
            frame = self.stage(frame.image, frame.geometry)
        self._ctx.push()
        try:
            host = frame.image
            if self.mapped:
                src_ptr = int(cast(Any, host.base).get_device_pointer())
            else:
                import pycuda.driver as cuda

                src = self._frame_src.get(host.shape)
                if src is None:
                    src = self._frame_src[host.shape] = cuda.mem_alloc(host.nbytes)
                cuda.memcpy_htod_async(src, host, self._stream)
                src_ptr = int(src)
            self._bind_batch(1)  # the kernel writes one image
            self._letterbox.launch(src_ptr, self._buffers[self._inputs[0].name].device_ptr, frame.geometry,
                                   self._stream)  # fmt: skip
            outputs = self._execute()
        finally:
            self._ctx.pop()
        spare = self._spare.setdefault(frame.image.shape, [])
        if len(spare) < self.MAX_SPARE_STAGING:
            spare.append(frame.image)
        return outputs

    def _execute(self) -> list[np.ndarray]:
        """Enqueue the engine, bring the outputs back, wait; the context is current."""
        if not self._context.execute_async_v3(self._stream.handle):
            raise BackendError("TensorRT execute_async_v3 failed")
        sizes = [int(np.prod(shape)) for shape in self._out_shapes]
        for t, n in zip(self._outputs, sizes):
            self._buffers[t.name].download(self._stream, n)
        self._stream.synchronize()
        # copies: the buffers are overwritten by the next frame; FP16 outputs are widened for the decoder,
        # integer outputs (EfficientNMS counts and classes) keep their type. At a batch below the buffers' the
        # outputs are the prefix of each buffer.
        return [
            _host_copy(self._buffers[t.name].prefix(n).reshape(shape))
            for t, n, shape in zip(self._outputs, sizes, self._out_shapes)
        ]

    def _require_loaded(self) -> None:
        if self._ctx is None:
            raise BackendError("the TensorRT backend is not loaded")

    def close(self) -> None:
        """Free device memory and detach the CUDA context; a no-op when not loaded."""
        if self._ctx is None:
            return
        self._ctx.push()
        self._release()

    def _release(self) -> None:
        """Free device memory and drop the context, which is current (pushed) on entry."""
        try:
            for buf in self._buffers.values():
                buf.free()
            for mem in self._frame_src.values():
                mem.free()
            self._buffers.clear()
            self._frame_src.clear()
            self._spare.clear()
            self._letterbox = self._context = self._engine = self._stream = None
        finally:
            self._ctx.pop()
            self._ctx.detach()  # drop the context before the process exits
            self._ctx = None


def use_zero_copy(setting: str, integrated: bool) -> bool:
    """Decide whether to use mapped host memory for the `model.tensorrt.zero_copy` setting.

    Mapped host memory pays off where the GPU shares the host's DRAM (Jetson); on a discrete GPU every
    kernel access would cross PCIe, so `auto` only maps on integrated GPUs.

    Raises:
        BackendError: `setting` is not `auto`, `on` or `off`.
    """
    if setting not in ("auto", "on", "off"):
        raise BackendError(f"model.tensorrt.zero_copy must be auto, on or off, not {setting!r}")
    return setting == "on" or (setting == "auto" and integrated)


def _host_copy(host: np.ndarray) -> np.ndarray:
    return host.astype(np.float32) if host.dtype == np.float16 else host.copy()
