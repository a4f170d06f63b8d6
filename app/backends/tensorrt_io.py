"""TensorRT 10 I/O planning: an engine's tensors, their dtypes and concrete shapes, and the binding order.

The binding order is the order in which an execution context is told about them. Pure logic over the
engine API (no CUDA), so it is tested on CPU against a stand-in of that API; the backend feeds it real
engines on a GPU. The engine, context and ``trt`` module are typed ``Any``: tensorrt ships no types.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from app.backends.base import BackendError


@dataclass(frozen=True, slots=True)
class IoTensor:
    """One engine input or output with a concrete shape."""

    name: str
    is_input: bool
    dtype: np.dtype
    shape: tuple[int, ...]  # concrete: dynamic dimensions resolved

    @property
    def nbytes(self) -> int:
        """Size in bytes of the whole tensor (its device buffer)."""
        return int(np.prod(self.shape)) * self.dtype.itemsize


def _input_shape(
    engine: Any, name: str, dims: tuple[int, ...], input_hw: tuple[int, int] | None, max_batch: int
) -> tuple[int, ...]:
    if all(d > 0 for d in dims):
        return dims
    if len(dims) != 4:
        raise BackendError(f"engine input {name!r} has dynamic shape {dims}; only NCHW inputs are supported")
    lo, _opt, hi = (tuple(int(x) for x in s) for s in engine.get_tensor_profile_shape(name, 0))
    # a dynamic batch: the most the profile allows, up to model.max_batch (never below the profile's minimum)
    batch = max(lo[0], min(max_batch, hi[0]))
    want = [batch, dims[1] if dims[1] > 0 else 3, *(input_hw or (hi[2], hi[3]))]
    for i, d in enumerate(dims):
        if d > 0:
            want[i] = d
    if any(not (lo[i] <= want[i] <= hi[i]) for i in range(4)):
        raise BackendError(f"engine input {name!r}: shape {tuple(want)} is outside its profile {lo}..{hi}")
    return tuple(want)


def plan_io(
    engine: Any, trt: Any, input_hw: tuple[int, int] | None = None, max_batch: int = 1
) -> tuple[list[IoTensor], list[IoTensor]]:
    """List an engine's inputs with concrete shapes and its outputs with the shapes it reports.

    Output dims still dynamic are resolved by `bind` once inputs are set.

    Args:
        engine: A deserialized ``trt.ICudaEngine``.
        trt: The ``tensorrt`` module (or a stand-in in tests).
        input_hw: ``(height, width)`` for a dynamic input; None takes the optimisation profile's maximum.
        max_batch: The batch a dynamic batch dimension gets, clamped to profile 0 (`model.max_batch`): the
            largest batch the buffers are sized for; smaller batches run in the same buffers (`bind_batch`).

    Returns:
        ``(inputs, outputs)`` in engine order.

    Raises:
        BackendError: Not exactly one input, no outputs, an input dtype other than float32/float16/uint8, a
            dynamic input that is not NCHW, or a wanted shape outside profile 0.
    """
    inputs: list[IoTensor] = []
    outputs: list[IoTensor] = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
        dims = tuple(int(d) for d in engine.get_tensor_shape(name))
        if is_input:
            inputs.append(IoTensor(name, True, dtype, _input_shape(engine, name, dims, input_hw, max_batch)))
        else:
            outputs.append(IoTensor(name, False, dtype, dims))
    if len(inputs) != 1:
        raise BackendError(f"a detector engine has one image input; this one has {[t.name for t in inputs]}")
    if not outputs:
        raise BackendError("the engine has no outputs")
    if inputs[0].dtype not in (np.float32, np.float16, np.uint8):
        raise BackendError(f"engine input {inputs[0].name!r} is {inputs[0].dtype}; expected float32/float16/uint8")
    return inputs, outputs


def bind(context: Any, inputs: list[IoTensor], outputs: list[IoTensor]) -> list[IoTensor]:
    """Set every input shape on an execution context, then read the outputs' concrete shapes back.

    Inputs come first because TensorRT only knows output shapes after that.

    Args:
        context: A ``trt.IExecutionContext``.
        inputs: From ``plan_io``.
        outputs: From ``plan_io``.

    Returns:
        The outputs with every dimension concrete.

    Raises:
        BackendError: The context rejects an input shape, or an output is still dynamic.
    """
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


def bind_batch(context: Any, inp: IoTensor, outputs: list[IoTensor], batch: int) -> list[tuple[int, ...]]:
    """Set the input's batch dimension to `batch` and read the outputs' shapes at it.

    Args:
        context: A ``trt.IExecutionContext`` bound by `bind` (buffers sized for `inp.shape`).
        inp: The image input at its largest batch.
        outputs: The outputs at that batch.
        batch: 1..inp.shape[0].

    Returns:
        Each output's concrete shape at `batch`, in `outputs` order (a prefix of its buffer).

    Raises:
        BackendError: `batch` is out of range, the context rejects the shape, or an output stays dynamic.
    """
    if not 1 <= batch <= inp.shape[0]:
        raise BackendError(f"batch {batch} outside 1..{inp.shape[0]} of input {inp.name!r}")
    shape = (batch, *inp.shape[1:])
    if not context.set_input_shape(inp.name, shape):
        raise BackendError(f"engine rejected input shape {shape} for {inp.name!r}")
    shapes = []
    for t in outputs:
        out = tuple(int(d) for d in context.get_tensor_shape(t.name))
        if any(d < 0 for d in out) or int(np.prod(out)) > int(np.prod(t.shape)):
            raise BackendError(f"output {t.name!r} has shape {out} at batch {batch}; its buffer is {t.shape}")
        shapes.append(out)
    return shapes


def set_addresses(context: Any, tensors: list[IoTensor], addresses: dict[str, int]) -> None:
    """Point each tensor of an execution context at its device buffer.

    Args:
        context: A ``trt.IExecutionContext``.
        tensors: The tensors to bind (inputs and outputs).
        addresses: Device address per tensor name.

    Raises:
        BackendError: A tensor has no address, or the context rejects one.
    """
    for t in tensors:
        if t.name not in addresses:
            raise BackendError(f"no device buffer for tensor {t.name!r}")
        if not context.set_tensor_address(t.name, int(addresses[t.name])):
            raise BackendError(f"engine rejected the buffer address of {t.name!r}")
