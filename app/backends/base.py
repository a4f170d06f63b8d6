"""The backend interface: the only thing the worker knows about an inference runtime."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from app.letterbox import LetterboxGeometry, Preprocessor

DYNAMIC_BATCH = 1 << 16  # `Backend.batch_capacity` of a dynamic batch axis: any batch the caller asks for


class BackendError(RuntimeError):
    """The runtime could not load or run the model; the message says which model and why."""


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One model input or output as the runtime declares it.

    Attributes:
        name: The tensor's name in the model.
        shape: Dimensions; a str or None marks a dynamic one (e.g. "batch").
        dtype: Element type (e.g. float32, float16, int32).
    """

    name: str
    shape: tuple[int | str | None, ...]  # str/None for dynamic dimensions
    dtype: np.dtype

    def is_static(self) -> bool:
        """True when every dimension is a positive int (no dynamic dimensions)."""
        return all(isinstance(d, int) and d > 0 for d in self.shape)


@dataclass(slots=True)
class StagedFrame:
    """A frame copied out of the ring for a backend that letterboxes on its device.

    The BGR uint8 pixels (page-locked when the backend staged them, so the upload is DMA) and where they go in the model
    input. The copy is what makes it safe: the ring slot may be overwritten as soon as the copy is checked.
    """

    image: np.ndarray
    geometry: LetterboxGeometry


class Backend(ABC):
    """Runs a detector model on a preprocessed NCHW batch."""

    name: str = "abstract"

    @abstractmethod
    def load(self) -> None:
        """Load the model; raises BackendError with a clear reason."""

    @property
    @abstractmethod
    def inputs(self) -> list[TensorSpec]:
        """The model inputs, in model order (the first is the `(B, 3, H, W)` image tensor; see `batch_capacity`)."""

    @property
    @abstractmethod
    def outputs(self) -> list[TensorSpec]:
        """The model outputs, in model order; `infer` returns arrays in this order."""

    @property
    def metadata(self) -> dict[str, str]:
        """Model metadata (Ultralytics writes names/stride/imgsz/task here)."""
        return {}

    @property
    def providers(self) -> list[str]:
        """What actually executes the model (for logs and stats)."""
        return [self.name]

    @abstractmethod
    def infer(self, batch: np.ndarray) -> list[np.ndarray]:
        """Run one batch; returns the outputs in `outputs` order."""

    @property
    def batch_capacity(self) -> int:
        """How many images one `infer` call takes at most.

        The input's batch dimension when it is fixed (usually 1), `DYNAMIC_BATCH` when it is dynamic (a symbolic or
        negative dimension).
        """
        shape = self.inputs[0].shape if self.inputs else (1,)
        dim = shape[0] if shape else 1
        return dim if isinstance(dim, int) and dim > 0 else DYNAMIC_BATCH

    @property
    def runs_on_cpu(self) -> bool:
        """True when the model executes on the host CPU (batching there buys little; see app/inference/batch.py)."""
        return True

    @property
    def preprocesses_on_device(self) -> bool:
        """True when `infer_frame` letterboxes on the device: the detector then stages raw frames."""
        return False

    def stage(self, image: np.ndarray, geometry: LetterboxGeometry) -> StagedFrame:
        """Copy a frame for `infer_frame` (into page-locked memory where the backend has it)."""
        return StagedFrame(image.copy(), geometry)

    def infer_frame(self, frame: StagedFrame) -> list[np.ndarray]:
        """Run one staged frame. Without device preprocessing: the host letterbox, then `infer`."""
        return self.infer(self._host_letterbox(frame))

    def _host_letterbox(self, frame: StagedFrame) -> np.ndarray:
        # After a GPU failover every frame comes this way: keep one Preprocessor (and its canvas) per backend
        # instead of allocating a 640x640 canvas per frame.
        pre: Preprocessor | None = getattr(self, "_host_preprocessor", None)
        dtype = np.dtype(self.inputs[0].dtype)
        if pre is None or pre.input_hw != frame.geometry.dst_hw or pre.dtype != dtype:
            pre = self._host_preprocessor = Preprocessor(frame.geometry.dst_hw, dtype)
        return pre(frame.image)[0]

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release runtime resources."""
