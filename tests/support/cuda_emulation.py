"""A host-memory stand-in for the slice of pycuda and TensorRT that `TensorRTBackend` calls, so the
backend's own logic runs on CPU: which buffers it allocates (page-locked, mapped, device), what it copies
where and in which order, the addresses it binds, context push/pop balance, cleanup.

It is not a stand-in for results: "device" memory is host memory at real addresses, the letterbox kernel
is the real letterbox.cu built for the host (see test_gpu_letterbox.py), and the "engine" is ONNX Runtime
running the real ONNX on whatever bytes sit at the input address when the backend enqueues it. A wrong
address, a missing copy or a stale buffer therefore shows up as wrong detections.
"""

from __future__ import annotations

import ctypes
import json
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np

from app.backends.gpu_preprocess import ARG_TYPES, KERNEL_SOURCE_PATH, LetterboxLaunch

_CTYPES = {np.int32: ctypes.c_int, np.float64: ctypes.c_double, np.float32: ctypes.c_float}


def build_host_kernel(out_dir: Path) -> ctypes.CDLL | None:
    """letterbox.cu compiled as host C++ (its CPU-test shim walks the grid); None without g++."""
    gxx = shutil.which("g++")
    if gxx is None:
        return None
    lib = out_dir / "letterbox_host.so"
    # -ffp-contract=off: the CUDA build forbids FMA contraction with __dmul_rn/__dadd_rn; keep the host alike.
    flags = ["-O2", "-ffp-contract=off", "-Wall", "-Werror", "-shared", "-fPIC", "-x", "c++"]
    subprocess.run([gxx, *flags, str(KERNEL_SOURCE_PATH), "-o", str(lib)], check=True, capture_output=True, text=True)
    dll = ctypes.CDLL(str(lib))
    scalars = [_CTYPES[t] for t in ARG_TYPES]
    for name in ("launch_letterbox_f32_host", "launch_letterbox_f16_host"):
        fn = getattr(dll, name)
        # src, src_h, src_w, src_pitch, dst, the remaining scalars, grid_x, grid_y, block_x, block_y
        fn.argtypes = [ctypes.c_void_p, *scalars[:3], ctypes.c_void_p, *scalars[3:]] + [ctypes.c_int] * 4
        fn.restype = None
    return dll


def run_host_kernel(dll: ctypes.CDLL, src_ptr: int, dst_ptr: int, launch: LetterboxLaunch, f16: bool) -> None:
    fn = dll.launch_letterbox_f16_host if f16 else dll.launch_letterbox_f32_host
    a = launch.args
    fn(src_ptr, *a[:3], dst_ptr, *a[3:], *launch.grid, *launch.block)


def _at(address: int, nbytes: int) -> np.ndarray:
    return np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(address))


class Emulator:
    """Installs fake `pycuda`, `pycuda.driver` and `tensorrt` modules; records what the backend does."""

    TRT_VERSION = "10.99.0-emulated"

    def __init__(self, integrated: bool = False) -> None:
        self.integrated = integrated
        self.context_stack: list[object] = []
        self.contexts_alive = 0
        self.device_live: dict[int, object] = {}  # address -> allocation, until freed
        self.pinned_allocs = 0
        self.mapped_allocs = 0
        self.copies: list[tuple[str, int]] = []  # ("htod"/"dtoh", nbytes)
        self.executions = 0
        self.batches: list[int] = []  # the input batch of every execution
        self.fail_executions = False
        self.driver = self._driver()
        self.trt = self._tensorrt()

    def install(self, monkeypatch) -> None:
        pkg = types.ModuleType("pycuda")
        pkg.driver = self.driver  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "pycuda", pkg)
        monkeypatch.setitem(sys.modules, "pycuda.driver", self.driver)
        monkeypatch.setitem(sys.modules, "tensorrt", self.trt)

    # ---- pycuda.driver ---------------------------------------------------------------------------------
    def _driver(self) -> types.ModuleType:
        emu = self
        d = types.ModuleType("pycuda.driver")
        d.device_attribute = types.SimpleNamespace(INTEGRATED="INTEGRATED")
        d.ctx_flags = types.SimpleNamespace(SCHED_AUTO=0, MAP_HOST=8)
        d.host_alloc_flags = types.SimpleNamespace(DEVICEMAP=2)

        class Context:
            def push(self) -> None:
                emu.context_stack.append(self)

            def pop(self) -> None:
                assert emu.context_stack and emu.context_stack[-1] is self, "pop of a context that is not current"
                emu.context_stack.pop()

            def detach(self) -> None:
                assert self not in emu.context_stack, "detach of a context still pushed"
                emu.contexts_alive -= 1

        class Device:
            def __init__(self, i: int) -> None:
                assert i == 0

            @staticmethod
            def count() -> int:
                return 1

            def compute_capability(self) -> tuple[int, int]:
                return (8, 7)

            def get_attribute(self, attr: str) -> int:
                assert attr == "INTEGRATED"
                return int(emu.integrated)

            def make_context(self, flags: int = 0) -> Context:
                ctx = Context()
                emu.contexts_alive += 1
                emu.context_stack.append(ctx)  # make_context leaves the new context current, as CUDA does
                return ctx

        class DeviceAllocation:
            def __init__(self, nbytes: int) -> None:
                self._buf = (ctypes.c_uint8 * nbytes)()
                self.nbytes = nbytes
                emu.device_live[int(self)] = self

            def __int__(self) -> int:
                return ctypes.addressof(self._buf)

            def free(self) -> None:
                emu.device_live.pop(int(self), None)

        def current() -> None:
            assert emu.context_stack, "a CUDA call without a current context"

        def pagelocked_empty(shape, dtype, mem_flags: int = 0) -> np.ndarray:
            current()
            nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
            mapped = bool(mem_flags & d.host_alloc_flags.DEVICEMAP)

            def get_device_pointer(buf) -> int:
                assert mapped, "get_device_pointer of host memory that was not allocated DEVICEMAP"
                return ctypes.addressof(buf)

            cls = type("HostAllocation", (ctypes.c_uint8 * nbytes,), {"get_device_pointer": get_device_pointer})
            emu.pinned_allocs += 1
            emu.mapped_allocs += mapped
            return np.ndarray(shape, dtype, buffer=cls())

        def is_pinned(a: np.ndarray) -> bool:
            base = a.base
            while isinstance(base, np.ndarray):  # a view (a smaller batch's prefix) of a page-locked array
                base = base.base
            return type(base).__name__ == "HostAllocation"

        def mem_alloc(nbytes: int) -> DeviceAllocation:
            current()
            return DeviceAllocation(nbytes)

        def memcpy_htod_async(dst, src: np.ndarray, stream) -> None:
            current()
            assert is_pinned(src), "asynchronous upload from pageable memory"
            assert int(dst) in emu.device_live, "upload into freed or foreign device memory"
            ctypes.memmove(int(dst), src.ctypes.data, src.nbytes)
            emu.copies.append(("htod", src.nbytes))

        def memcpy_dtoh_async(dst: np.ndarray, src, stream) -> None:
            current()
            assert is_pinned(dst), "asynchronous download into pageable memory"
            ctypes.memmove(dst.ctypes.data, int(src), dst.nbytes)
            emu.copies.append(("dtoh", dst.nbytes))

        class Stream:
            def __init__(self, flags: int = 0) -> None:
                self.handle = 1234

            def synchronize(self) -> None:
                current()

        d.init = lambda: None
        d.Device = Device
        d.Stream = Stream
        d.pagelocked_empty = pagelocked_empty
        d.mem_alloc = mem_alloc
        d.memcpy_htod_async = memcpy_htod_async
        d.memcpy_dtoh_async = memcpy_dtoh_async
        return d

    # ---- tensorrt --------------------------------------------------------------------------------------
    def _tensorrt(self) -> types.ModuleType:
        emu = self
        t = types.ModuleType("tensorrt")
        t.__version__ = self.TRT_VERSION
        t.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
        dtypes = {"FLOAT": np.float32, "HALF": np.float16, "INT32": np.int32}
        t.nptype = lambda dt: dtypes[dt]

        class Logger:
            WARNING = 2

            def __init__(self, severity: int = 2) -> None:
                pass

        class Context:
            def __init__(self, engine: Engine) -> None:
                self.engine = engine
                self.addresses: dict[str, int] = {}
                self.shapes = dict(engine.shapes)  # -1 for dynamic dimensions until the input shape is set

            def set_input_shape(self, name: str, shape) -> bool:
                shape = tuple(int(d) for d in shape)
                if name not in self.engine.profile:
                    return shape == self.engine.shapes[name]
                lo, _, hi = self.engine.profile[name]
                if len(shape) != len(lo) or any(not (a <= d <= b) for a, d, b in zip(lo, shape, hi)):
                    return False
                self.shapes[name] = shape
                self.shapes.update(self.engine.output_shapes(shape))
                return True

            def get_tensor_shape(self, name: str) -> tuple[int, ...]:
                return self.shapes[name]

            def set_tensor_address(self, name: str, address: int) -> bool:
                self.addresses[name] = int(address)
                return True

            def execute_async_v3(self, stream_handle: int) -> bool:
                assert emu.context_stack, "enqueue without a current context"
                if emu.fail_executions:
                    return False
                e = self.engine
                feed = {}
                assert all(d > 0 for n in e.inputs for d in self.shapes[n]), "enqueue before the input shape is set"
                for name in e.inputs:
                    dt = np.dtype(dtypes[e.dtypes[name]])
                    n = int(np.prod(self.shapes[name])) * dt.itemsize
                    x = _at(self.addresses[name], n).view(dt).reshape(self.shapes[name])
                    feed[name] = x.astype(np.float32)
                results = e.session.run(e.outputs, feed)
                for name, r in zip(e.outputs, results):
                    dt = np.dtype(dtypes[e.dtypes[name]])
                    out = _at(self.addresses[name], r.size * dt.itemsize).view(dt).reshape(r.shape)
                    out[...] = r.astype(dt)
                emu.executions += 1
                emu.batches.append(int(self.shapes[e.inputs[0]][0]))
                return True

        class Engine:
            """An ONNX model posing as a built engine: I/O names, shapes, dtypes, and the plan's precision
            decides the dtype of the input binding (an FP16-I/O engine takes a half input). A plan with a
            `profile` (an ONNX with symbolic dimensions, as `vigil engine build` makes with `max_batch`) has -1
            for those and optimisation profile 0 over batch 1..max_batch at `imgsz`."""

            def __init__(self, spec: dict) -> None:
                import onnxruntime as ort

                self.session = ort.InferenceSession(spec["onnx"], providers=["CPUExecutionProvider"])
                self.inputs = [i.name for i in self.session.get_inputs()]
                self.outputs = [o.name for o in self.session.get_outputs()]
                io = [*self.session.get_inputs(), *self.session.get_outputs()]
                self.profile: dict[str, tuple[tuple[int, ...], ...]] = {}
                if spec.get("profile"):
                    self.shapes = {i.name: tuple(d if isinstance(d, int) else -1 for d in i.shape) for i in io}
                    b, size = spec["profile"]["max_batch"], spec["profile"]["imgsz"]
                    self.profile = {
                        n: ((1, 3, size, size), (b, 3, size, size), (b, 3, size, size)) for n in self.inputs
                    }
                else:
                    self.shapes = {i.name: tuple(i.shape) for i in io}
                self._resolved: dict[tuple[int, ...], dict[str, tuple[int, ...]]] = {}
                self.dtypes = {n: "FLOAT" for n in [*self.inputs, *self.outputs]}
                if spec.get("half_input"):
                    self.dtypes[self.inputs[0]] = "HALF"

            @property
            def num_io_tensors(self) -> int:
                return len(self.inputs) + len(self.outputs)

            def get_tensor_name(self, i: int) -> str:
                return [*self.inputs, *self.outputs][i]

            def get_tensor_mode(self, name: str) -> str:
                return "INPUT" if name in self.inputs else "OUTPUT"

            def get_tensor_dtype(self, name: str) -> str:
                return self.dtypes[name]

            def get_tensor_shape(self, name: str) -> tuple[int, ...]:
                return self.shapes[name]

            def create_execution_context(self) -> Context:
                return Context(self)

            def get_tensor_profile_shape(self, name: str, profile: int) -> tuple[tuple[int, ...], ...]:
                assert profile == 0
                return self.profile[name]

            def output_shapes(self, input_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
                """The outputs' shapes at an input shape, as TensorRT infers them (here: by running the model)."""
                if input_shape not in self._resolved:
                    out = self.session.run(self.outputs, {self.inputs[0]: np.zeros(input_shape, np.float32)})
                    self._resolved[input_shape] = {n: tuple(a.shape) for n, a in zip(self.outputs, out)}
                return self._resolved[input_shape]

        class Runtime:
            def __init__(self, logger: Logger) -> None:
                pass

            def deserialize_cuda_engine(self, plan: bytes) -> Engine | None:
                assert emu.context_stack, "deserialize without a current context"
                if not plan.startswith(b"EMULATED:"):
                    return None  # what TensorRT does with a plan it cannot read
                return Engine(json.loads(plan[len(b"EMULATED:") :]))

        t.Logger = Logger
        t.Runtime = Runtime
        return t

    @staticmethod
    def plan(onnx: Path, half_input: bool = False, max_batch: int | None = None, imgsz: int = 416) -> bytes:
        """The bytes of an "engine" file for `onnx`; with `max_batch`, a profile over batch 1..max_batch at
        `imgsz` (for an ONNX with a dynamic batch axis)."""
        profile = {"max_batch": max_batch, "imgsz": imgsz} if max_batch else None
        return b"EMULATED:" + json.dumps({"onnx": str(onnx), "half_input": half_input, "profile": profile}).encode()


class HostLetterbox:
    """`GpuLetterbox` with the host build of the same kernel, launched with the same parameters."""

    def __init__(self, dll: ctypes.CDLL, dtype, *, cache_dir: Path | None = None, block=(32, 8)) -> None:
        self.dll = dll
        self.f16 = np.dtype(dtype) == np.float16
        self.block = block
        self.launches = 0

    def launch(self, src_ptr: int, dst_ptr: int, geometry, stream) -> None:
        run_host_kernel(self.dll, src_ptr, dst_ptr, LetterboxLaunch.from_geometry(geometry, self.block), self.f16)
        self.launches += 1
