"""The backend interface: the only thing the worker knows about an inference runtime."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np


class BackendError(RuntimeError):
    """The runtime could not load or run the model; the message says which model and why."""


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    shape: tuple[int | str | None, ...]  # str/None for dynamic dimensions
    dtype: np.dtype

    def is_static(self) -> bool:
        return all(isinstance(d, int) and d > 0 for d in self.shape)


class Backend(ABC):
    """Runs a detector model on a preprocessed NCHW batch."""

    name: str = "abstract"

    @abstractmethod
    def load(self) -> None:
        """Load the model; raises BackendError with a clear reason."""

    @property
    @abstractmethod
    def inputs(self) -> list[TensorSpec]: ...

    @property
    @abstractmethod
    def outputs(self) -> list[TensorSpec]: ...

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

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release runtime resources."""
