"""DEPRECATED: TensorRT 10's implicit INT8 calibration (IInt8EntropyCalibrator2 with a calibration cache).

Kept for TensorRT 10 users who already rely on a calibration cache. TensorRT deprecates implicit
quantization and TensorRT 11 removes it; the supported path is a Q/DQ ONNX from `vigil engine calibrate`,
whose accuracy is gated on held-out frames before it is used (this path has no such gate beyond the
engine's validation against ONNX Runtime).

Batches are preprocessed by the same Preprocessor as inference, so the calibrator sees exactly what the
engine will.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from app.letterbox import Preprocessor

log = logging.getLogger(__name__)

DEPRECATION = (
    "implicit INT8 calibration (IInt8EntropyCalibrator2) is deprecated in TensorRT 10 and removed in 11; "
    "use `vigil engine calibrate` (Q/DQ ONNX) instead"
)


class CalibrationBatches:
    """Calibration frames as (batch, 3, H, W) float32 tensors, C-contiguous, ready for one host->device copy.

    Args:
        frames: ``(H, W, 3)`` uint8 BGR frames of any size (letterboxed like inference frames).
        input_hw: ``(height, width)`` of the engine input in pixels.
        batch_size: Frames per batch; a partial last batch is dropped.

    Raises:
        ValueError: ``frames`` is empty.
    """

    def __init__(self, frames: Sequence[np.ndarray], input_hw: tuple[int, int], batch_size: int = 1) -> None:
        if not frames:
            raise ValueError("no calibration frames")
        self.frames = frames
        self.input_hw = input_hw
        self.batch_size = batch_size

    @property
    def nbytes(self) -> int:
        """Bytes of one float32 batch (the device buffer size)."""
        return self.batch_size * 3 * self.input_hw[0] * self.input_hw[1] * 4

    def __len__(self) -> int:
        return len(self.frames) // self.batch_size  # a partial last batch is dropped: fixed-size buffers

    def __iter__(self) -> Iterator[np.ndarray]:
        pre = Preprocessor(self.input_hw)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            chunk = [pre(f)[0] for f in self.frames[start : start + self.batch_size]]
            yield np.ascontiguousarray(np.concatenate(chunk, axis=0), dtype=np.float32)


class CalibrationCache:
    """TensorRT's calibration table on disk.

    The file name carries the model hash and input size, so a cache made for another model is never read
    back (TensorRT would trust it).

    Args:
        directory: Folder of the cache file (the calibration frames' folder).
        model_stem: Model file name without suffix.
        model_sha256: Hex SHA-256 of the model file (12 characters go into the name).
        input_hw: ``(height, width)`` of the engine input.
    """

    def __init__(self, directory: str | Path, model_stem: str, model_sha256: str, input_hw: tuple[int, int]) -> None:
        self.path = Path(directory) / f"{model_stem}.{model_sha256[:12]}.{input_hw[0]}x{input_hw[1]}.trt-calib"

    def read(self) -> bytes | None:
        """The cached table, or None when there is none yet."""
        if self.path.is_file():
            log.info("using calibration cache %s", self.path)
            return self.path.read_bytes()
        return None

    def write(self, data: bytes) -> None:
        """Store the table atomically (write a temporary file, then rename)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(self.path)


def entropy_calibrator(trt: Any, cuda: Any, batches: CalibrationBatches, cache: CalibrationCache) -> Any:
    """Build an IInt8EntropyCalibrator2 over `batches` (set it as `config.int8_calibrator`).

    Warns (DeprecationWarning and log) on every call. Needs a current CUDA context: it allocates one
    batch's device buffer.

    Args:
        trt: The tensorrt module, passed in so this module imports without it (tensorrt ships no types).
        cuda: The pycuda.driver module, likewise.
        batches: The calibration data.
        cache: Read instead of calibrating when present; written after calibration.

    Returns:
        The calibrator (a ``trt.IInt8EntropyCalibrator2`` subclass instance).
    """
    warnings.warn(DEPRECATION, DeprecationWarning, stacklevel=2)
    log.warning(DEPRECATION)

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._batches = iter(batches)
            self._device = cuda.mem_alloc(batches.nbytes)
            self.served = 0

        def get_batch_size(self) -> int:
            return batches.batch_size

        def get_batch(self, names: list[str]) -> list[int] | None:
            batch = next(self._batches, None)
            if batch is None:
                return None  # tells TensorRT the calibration data is exhausted
            cuda.memcpy_htod(self._device, batch)
            self.served += 1
            return [int(self._device)] * len(names)

        def read_calibration_cache(self) -> bytes | None:
            return cache.read()  # with a cache, TensorRT skips get_batch entirely

        def write_calibration_cache(self, data: Any) -> None:  # a buffer TensorRT owns
            cache.write(bytes(data))

    return EntropyCalibrator()
