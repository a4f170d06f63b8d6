"""TensorRT 10 I/O planning: which tensors an engine has, their dtypes and concrete shapes, and the
order in which an execution context is told about them. Pure logic over the engine API (no CUDA), so
it is tested on CPU against a stand-in of that API; the backend feeds it real engines on a GPU."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from app.backends.base import BackendError


@dataclass(frozen=True, slots=True)
class IoTensor:
    name: str
    is_input: bool
    dtype: np.dtype
    shape: tuple[int, ...]  # concrete: dynamic dimensions resolved

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize


def _input_shape(engine, name: str, dims: tuple[int, ...], input_hw: tuple[int, int] | None) -> tuple[int, ...]:
    if all(d > 0 for d in dims):
        return dims
    if len(dims) != 4:
        raise BackendError(f"engine input {name!r} has dynamic shape {dims}; only NCHW inputs are supported")
    lo, _opt, hi = (tuple(int(x) for x in s) for s in engine.get_tensor_profile_shape(name, 0))
    want = [1, dims[1] if dims[1] > 0 else 3, *(input_hw or (hi[2], hi[3]))]
    for i, d in enumerate(dims):
        if d > 0:
            want[i] = d
    if any(not (lo[i] <= want[i] <= hi[i]) for i in range(4)):
        raise BackendError(f"engine input {name!r}: shape {tuple(want)} is outside its profile {lo}..{hi}")
    return tuple(want)


def plan_io(engine, trt, input_hw: tuple[int, int] | None = None) -> tuple[list[IoTensor], list[IoTensor]]:
    """Inputs with concrete shapes (batch 1, `input_hw` or the profile's max) and outputs with the shapes
    the engine reports for them; output dims still dynamic are resolved by `bind` once inputs are set."""
    inputs: list[IoTensor] = []
    outputs: list[IoTensor] = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
        dims = tuple(int(d) for d in engine.get_tensor_shape(name))
        if is_input:
            inputs.append(IoTensor(name, True, dtype, _input_shape(engine, name, dims, input_hw)))
        else:
            outputs.append(IoTensor(name, False, dtype, dims))
    if len(inputs) != 1:
        raise BackendError(f"a detector engine has one image input; this one has {[t.name for t in inputs]}")
    if not outputs:
        raise BackendError("the engine has no outputs")
    if inputs[0].dtype not in (np.float32, np.float16, np.uint8):
        raise BackendError(f"engine input {inputs[0].name!r} is {inputs[0].dtype}; expected float32/float16/uint8")
    return inputs, outputs


def bind(context, inputs: list[IoTensor], outputs: list[IoTensor]) -> list[IoTensor]:
    """Set every input shape first (TensorRT only knows output shapes after that), then read the outputs'
    concrete shapes back from the context."""
    for t in inputs:
        if not context.set_input_shape(t.name, t.shape):
            raise BackendError(f"engine rejected input shape {t.shape} for {t.name!r}")
    resolved = []
    for t in outputs:
        shape = tuple(int(d) for d in context.get_tensor_shape(t.name))
        if any(d < 0 for d in shape):
            raise BackendError(f"output {t.name!r} still has a dynamic shape {shape} after the inputs were set")
        resolved.append(IoTensor(t.name, False, t.dtype, shape))
    return resolved


def set_addresses(context, tensors: list[IoTensor], addresses: dict[str, int]) -> None:
    for t in tensors:
        if t.name not in addresses:
            raise BackendError(f"no device buffer for tensor {t.name!r}")
        if not context.set_tensor_address(t.name, int(addresses[t.name])):
            raise BackendError(f"engine rejected the buffer address of {t.name!r}")
