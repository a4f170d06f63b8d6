"""Run-time failover: a GPU backend that keeps failing hands over to ONNX Runtime on the same model.

The failures meant are a CUDA error or running out of memory. The fallback gives the same outputs; the
GPU is tried again later.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import numpy as np

from app.backends.base import Backend, StagedFrame, TensorSpec
from app.letterbox import LetterboxGeometry

T = TypeVar("T")

log = logging.getLogger(__name__)


class FailoverBackend(Backend):
    """Serves from ``primary`` until it fails ``max_failures`` times in a row, then from a fallback.

    The failing call that trips the failover is retried on the fallback, so the frame is not lost; earlier
    failures propagate to the caller. After ``retry_after_s`` seconds (monotonic) on the fallback the
    primary is tried again (reloaded first when ``reload_primary`` is given), and a single failure then
    sends it back. Inputs, outputs and metadata are always the primary's.

    Args:
        primary: The loaded GPU backend.
        fallback: Builds the fallback backend; called (and loaded) on the first failover only.
        max_failures: Consecutive inference failures that trigger the failover.
        retry_after_s: Seconds on the fallback before the primary is tried again.
        reload_primary: Builds a fresh primary for a retry; None reuses the old one.
    """

    def __init__(
        self,
        primary: Backend,
        fallback: Callable[[], Backend],
        *,
        max_failures: int = 3,
        retry_after_s: float = 300.0,
        reload_primary: Callable[[], Backend] | None = None,
    ) -> None:
        self.primary = primary
        self._make_fallback = fallback
        self._reload_primary = reload_primary
        self.max_failures = max_failures
        self.retry_after_s = retry_after_s
        self.fallback: Backend | None = None
        self.active: Backend = primary
        self.failures = 0
        self.failovers = 0
        self.reason = ""
        self._last_error = ""
        self._fell_back_at = 0.0

    @property
    def name(self) -> str:  # type: ignore[override]
        """The name of the backend serving now."""
        return self.active.name

    def load(self) -> None:
        """Load the primary."""
        self.primary.load()

    @property
    def inputs(self) -> list[TensorSpec]:
        """The primary's inputs."""
        return self.primary.inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        """The primary's outputs (the fallback runs the same model)."""
        return self.primary.outputs

    @property
    def metadata(self) -> dict[str, str]:
        """The primary's model metadata."""
        return self.primary.metadata

    @property
    def providers(self) -> list[str]:
        """The providers of the backend serving now."""
        return self.active.providers

    @property
    def batch_capacity(self) -> int:
        """The primary's (the fallback runs the same model, and batches that fit the primary fit an ONNX input)."""
        return self.primary.batch_capacity

    @property
    def runs_on_cpu(self) -> bool:
        """Whether the backend serving now runs on the CPU."""
        return self.active.runs_on_cpu

    @property
    def preprocesses_on_device(self) -> bool:
        """Whether the primary letterboxes on its device (then frames are staged even while on the fallback)."""
        return self.primary.preprocesses_on_device

    def infer(self, batch: np.ndarray) -> list[np.ndarray]:
        """Run the serving backend on a ``(B, 3, H, W)`` RGB 0..1 batch; outputs in ``outputs`` order.

        Raises:
            Exception: The primary's error while below ``max_failures``, or any error of the fallback.
        """
        return self._serve(lambda b: b.infer(batch))

    def stage(self, image: np.ndarray, geometry: LetterboxGeometry) -> StagedFrame:
        """Stage a ``(H, W, 3)`` uint8 BGR frame with the serving backend (failures count, successes don't)."""
        # a copy that worked says nothing about the GPU: only inference successes reset the failure count
        return self._serve(lambda b: b.stage(image, geometry), proves_health=False)

    def infer_frame(self, frame: StagedFrame) -> list[np.ndarray]:
        """Run the serving backend on a staged frame; outputs in ``outputs`` order."""
        # A frame staged for the GPU is still a frame: the fallback letterboxes it on the host.
        return self._serve(lambda b: b.infer_frame(frame))

    def _serve(self, call: Callable[[Backend], T], proves_health: bool = True) -> T:
        if self.active is not self.primary and time.monotonic() - self._fell_back_at >= self.retry_after_s:
            self._try_primary_again()
        if self.active is not self.primary:
            return call(self.active)
        try:
            out = call(self.primary)
        except Exception as exc:
            self.failures += 1
            if self.failures < self.max_failures:
                raise
            self._fail_over(f"{type(exc).__name__}: {exc}")
            return call(self.active)  # this frame too, on the fallback
        if proves_health:
            self.failures = 0
        return out

    def _fail_over(self, why: str) -> None:
        if self.fallback is None:
            self.fallback = self._make_fallback()
            self.fallback.load()
        self.active = self.fallback
        self.failovers += 1
        self._fell_back_at = time.monotonic()
        self._last_error = why
        self.reason = f"failover #{self.failovers} to {self.fallback.name} ({why})"
        log.error("%s; retrying %s in %.0f s", self.reason, self.primary.name, self.retry_after_s)

    def _try_primary_again(self) -> None:
        self._fell_back_at = time.monotonic()
        if self._reload_primary is not None:
            try:
                self.primary.close()
                self.primary = self._reload_primary()
            except Exception as exc:  # still broken: stay on the fallback until the next retry
                log.warning("%s still unavailable: %s", self.primary.name, exc)
                return
        self.active, self.failures = self.primary, self.max_failures - 1  # one failure sends it back
        self.reason = f"back on {self.primary.name} after {self.failovers} failover(s); last: {self._last_error}"
        log.info("retrying %s", self.primary.name)

    def close(self) -> None:
        """Close the primary and, if it was built, the fallback."""
        self.primary.close()
        if self.fallback is not None:
            self.fallback.close()
