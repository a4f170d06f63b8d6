"""debug.faults inside the worker: leak, hang, die, slow a stage, fail frames or make the backend fail on purpose.

This way the watchdog and the backend failover are tested for real. Never on in production.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np

from app.backends.base import Backend, BackendError, TensorSpec
from app.config import FaultsConfig, ModelConfig

log = logging.getLogger(__name__)


class FailingBackend(Backend):
    """Wraps a working backend and raises on every call after `after` frames, like a sticky CUDA error.

    It stands in for the primary of a failover; the real backend serves otherwise.

    Args:
        inner: The working backend it delegates to.
        after: Calls of ``infer`` that succeed; every later one raises.
    """

    def __init__(self, inner: Backend, after: int) -> None:
        self.inner = inner
        self.after = after
        self.calls = 0
        self.name = f"{inner.name}+faults"

    def load(self) -> None:
        """Load the wrapped backend."""
        self.inner.load()

    @property
    def inputs(self) -> list[TensorSpec]:
        """The wrapped backend's inputs."""
        return self.inner.inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        """The wrapped backend's outputs."""
        return self.inner.outputs

    @property
    def metadata(self) -> dict[str, str]:
        """The wrapped backend's model metadata."""
        return self.inner.metadata

    def infer(self, batch: np.ndarray) -> list[np.ndarray]:
        """Run the wrapped backend, until the call count passes ``after``.

        Raises:
            BackendError: Always once more than ``after`` calls were made ("device lost").
        """
        self.calls += 1
        if self.calls > self.after:
            raise BackendError("fault injection: device lost")
        return self.inner.infer(batch)

    def close(self) -> None:
        """Close the wrapped backend."""
        self.inner.close()


class InjectedFrameError(RuntimeError):
    """A frame failed on purpose (``debug.faults.fail_every_frames``)."""


class FaultInjector:
    """Applies ``debug.faults`` in the worker: a failing backend at load; slow stages, failed frames and so on.

    Per frame: slow stages, failing frames, leaks, stalls and crashes.

    Args:
        cfg: The fault settings; every fault is off by default.
    """

    def __init__(self, cfg: FaultsConfig) -> None:
        self.cfg = cfg
        self.frames = 0  # frames processed successfully
        self.taken = 0  # frames taken from a ring, processed or failed
        self._leaked: list[np.ndarray] = []

    def wrap_backend(self, backend: Backend, model: ModelConfig, warmup_runs: int) -> Backend:
        """Put the loaded backend behind a failing wrapper when ``backend_fail_after_frames`` is set.

        The failing wrapper becomes the primary behind the same failover that guards a TensorRT engine, with
        ONNX Runtime on the same model as the fallback.

        Args:
            backend: The loaded backend.
            model: The model config the ONNX Runtime fallback loads.
            warmup_runs: Warm-up inferences the worker runs first; they do not count toward the frames.

        Returns:
            ``backend`` unchanged when the fault is off, else the failover.

        With ``standby_load_delay_s`` (set only for blue-green standbys) loading takes that much longer.
        """
        if self.cfg.standby_load_delay_s:
            log.warning("fault injection: slow standby load, %.1f s more", self.cfg.standby_load_delay_s)
            time.sleep(self.cfg.standby_load_delay_s)
        if not self.cfg.backend_fail_after_frames:
            return backend
        from app.backends import onnxruntime_backend
        from app.backends.failover import FailoverBackend

        failing = FailingBackend(backend, self.cfg.backend_fail_after_frames + warmup_runs)
        return FailoverBackend(failing, lambda: onnxruntime_backend(model), retry_after_s=self.cfg.backend_retry_s)

    def before_frame(self) -> None:
        """Count a frame the worker took from a ring; fail it when ``fail_every_frames`` says so.

        Frames ``fail_after_frames + k * fail_every_frames`` (k >= 1) fail, within ``fail_frames`` frames after
        ``fail_after_frames`` (0: forever).

        Raises:
            InjectedFrameError: This frame is one to fail.
        """
        c = self.cfg
        self.taken += 1
        n = self.taken - c.fail_after_frames
        if c.fail_every_frames and n > 0 and (not c.fail_frames or n <= c.fail_frames) and n % c.fail_every_frames == 0:
            raise InjectedFrameError(f"fault injection: frame {self.taken} fails")

    def stage_delay_ms(self, stage: str) -> float:
        """Slow `stage` of the current frame down when ``slow_stage`` says so (call after the stage ran).

        Args:
            stage: `preprocess`, `inference` or `postprocess`.

        Returns:
            The milliseconds slept (0.0 when this stage of this frame is not slowed), to add to the stage's time.
        """
        c = self.cfg
        n = self.taken - c.slow_after_frames
        if c.slow_stage != stage or not c.slow_stage_ms or n <= 0 or (c.slow_frames and n > c.slow_frames):
            return 0.0
        time.sleep(c.slow_stage_ms / 1e3)
        return c.slow_stage_ms

    def after_frame(self) -> None:
        """Count a processed frame and inject what is due.

        Leaks ``leak_mb_per_frame`` MiB of resident memory, stalls ``stall_s`` seconds once at
        ``stall_after_frames``, and exits the process with status 70 at ``crash_after_frames``.
        """
        c = self.cfg
        self.frames += 1
        if c.leak_mb_per_frame:
            self._leaked.append(np.ones(int(c.leak_mb_per_frame * 2**20), np.uint8))  # written: really resident
        if c.stall_after_frames and self.frames == c.stall_after_frames:
            log.warning("fault injection: stalling for %.1f s", c.stall_s)
            time.sleep(c.stall_s)
        if c.crash_after_frames and self.frames >= c.crash_after_frames:
            log.warning("fault injection: crashing after %d frames", self.frames)
            os._exit(70)
