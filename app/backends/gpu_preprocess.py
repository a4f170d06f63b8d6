"""Letterbox preprocessing on the GPU: one CUDA kernel, bit-identical to the CPU `Preprocessor`.

The kernel (letterbox.cu) goes from the uint8 BGR frame to the engine's NCHW RGB input.

`LetterboxLaunch` is plain Python on purpose: the launch parameters are derived from the CPU path's own
`LetterboxGeometry`, and the host test runs the kernel body with exactly these values, so what the test
checks is what the backend launches. `GpuLetterbox` needs pycuda and a CUDA context and is only imported
by the TensorRT backend.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.letterbox import PAD_VALUE, LetterboxGeometry

log = logging.getLogger(__name__)

KERNEL_SOURCE_PATH = Path(__file__).with_name("letterbox.cu")

KERNELS = {np.dtype(np.float32): "letterbox_f32", np.dtype(np.float16): "letterbox_f16"}

# The kernel's scalar parameters after (src, dst), in order, and their C types: nine int, two double, one float.
ARG_TYPES: tuple[type[np.generic], ...] = (np.int32,) * 9 + (np.float64, np.float64, np.float32)

# blobFromImage multiplies by float32(1/255) in float32; float32(114/255) is one ulp off that product.
PAD = float(np.float32(PAD_VALUE) * np.float32(1.0 / 255.0))


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True, slots=True)
class LetterboxLaunch:
    """Grid, block and scalar kernel arguments for one source size; see `args` for the kernel order."""

    block: tuple[int, int]
    grid: tuple[int, int]
    src_h: int
    src_w: int
    src_pitch: int
    dst_h: int
    dst_w: int
    top: int
    left: int
    new_h: int
    new_w: int
    scale_x: float
    scale_y: float
    pad: float

    @classmethod
    def from_geometry(cls, geometry: LetterboxGeometry, block: tuple[int, int] = (32, 8)) -> LetterboxLaunch:
        """Derive the launch from the CPU path's geometry for one source size.

        Args:
            geometry: Source size, model input size, resized size and padding offsets (pixels).
            block: CUDA block ``(x, y)`` in threads; the grid covers the model input, one thread per pixel.
        """
        src_h, src_w = geometry.src_hw
        dst_h, dst_w = geometry.dst_hw
        new_w, new_h = geometry.resized_wh
        return cls(
            block=block,
            grid=(_ceil_div(dst_w, block[0]), _ceil_div(dst_h, block[1])),
            src_h=src_h,
            src_w=src_w,
            src_pitch=src_w * 3,  # a contiguous HxWx3 uint8 frame
            dst_h=dst_h,
            dst_w=dst_w,
            top=geometry.top,
            left=geometry.left,
            new_h=new_h,
            new_w=new_w,
            # OpenCV's own expression (1 / inv_scale, not src / dst): they can differ in the last bit.
            scale_x=1.0 / (new_w / src_w),
            scale_y=1.0 / (new_h / src_h),
            pad=PAD,
        )

    @property
    def args(self) -> tuple[int | float, ...]:
        """Scalar kernel arguments in kernel order (the src and dst pointers go around them)."""
        return (
            self.src_h,
            self.src_w,
            self.src_pitch,
            self.dst_h,
            self.dst_w,
            self.top,
            self.left,
            self.new_h,
            self.new_w,
            self.scale_x,
            self.scale_y,
            self.pad,
        )


class GpuLetterbox:
    """The compiled kernel for one engine input dtype; launches on the caller's stream and context.

    Compiles with nvcc through pycuda on construction, so a CUDA context must be current.

    Args:
        dtype: The engine input dtype, float32 or float16.
        cache_dir: Where pycuda caches the compiled kernel; None uses pycuda's default cache, and an
            unwritable folder compiles without a cache.
        block: CUDA block ``(x, y)`` in threads.

    Raises:
        ValueError: ``dtype`` is neither float32 nor float16.
    """

    def __init__(
        self, dtype: np.typing.DTypeLike, *, cache_dir: Path | None = None, block: tuple[int, int] = (32, 8)
    ) -> None:
        dt = np.dtype(dtype)
        if dt not in KERNELS:
            raise ValueError(f"GPU letterbox supports float32 and float16 engine inputs, not {dt}")
        from pycuda.compiler import SourceModule

        self.dtype = dt
        self.block = block
        cache: str | bool | None = None  # None: pycuda's default cache under the home directory
        if cache_dir is not None:
            try:
                cache_dir.mkdir(parents=True, exist_ok=True)  # pycuda does not create a given cache_dir
                cache = str(cache_dir)
            except OSError as exc:
                # a hardened service may not write anywhere else either: compile without a cache
                log.warning("kernel cache %s unusable (%s): compiling without a cache", cache_dir, exc)
                cache = False
        # no_extern_c: the source declares its kernels extern "C" itself (and includes cuda_fp16.h).
        module = SourceModule(KERNEL_SOURCE_PATH.read_text(), no_extern_c=True, cache_dir=cache)
        self._fn = module.get_function(KERNELS[dt])
        self._cached: tuple[LetterboxGeometry, LetterboxLaunch] | None = None  # the geometry rarely changes

    def launch(self, src_ptr: int, dst_ptr: int, geometry: LetterboxGeometry, stream: Any) -> None:
        """Enqueue the kernel on ``stream``; returns before it runs.

        Args:
            src_ptr: Device address of the contiguous ``(H, W, 3)`` uint8 BGR frame.
            dst_ptr: Device address of the ``(1, 3, h, w)`` RGB 0..1 input in this kernel's dtype.
            geometry: The frame's letterbox (its ``src_hw`` must be the frame's size).
            stream: The ``pycuda.driver.Stream`` to launch on (pycuda ships no types).
        """
        if self._cached is None or self._cached[0] != geometry:
            self._cached = (geometry, LetterboxLaunch.from_geometry(geometry, self.block))
        p = self._cached[1]
        typed = [t(v) for t, v in zip(ARG_TYPES, p.args)]
        # Kernel order: src, src_h, src_w, src_pitch, dst, then the rest of the scalars.
        args = (np.uintp(src_ptr), *typed[:3], np.uintp(dst_ptr), *typed[3:])
        self._fn(*args, block=(*p.block, 1), grid=p.grid, stream=stream)
