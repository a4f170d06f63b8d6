"""The contract between the live pipeline and a monitor (latency budget, prediction drift)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from app.config import VigilConfig
    from app.inference.protocol import WorkerReady
    from app.pipeline.records import ResultRecord, SystemEvent


class Monitor(Protocol):
    """Watches results as they are published and reports what it finds as system events.

    Every call comes from the pipeline's asyncio loop and must be cheap (O(1) per result; `check` once per tick).
    Optionally a monitor also has `reconfigure(cfg)` (`Reconfigurable`): a config reload calls it through
    `getattr` whenever `budget`, `monitoring` or `cameras` changed; a monitor without it keeps its settings.
    """

    section: str  # its key in the stats document (`budget`, `drift`)

    def observe(self, record: ResultRecord, published_mono_ns: int) -> None:
        """One processed frame, after every service had it (`published_mono_ns`: `time.monotonic_ns()` then)."""
        ...

    def observe_frame_error(self, camera: str) -> None:
        """The worker could not process one frame of `camera`."""
        ...

    def check(self, now_mono: float) -> list[SystemEvent]:
        """Evaluate at `now_mono` (`time.monotonic()`, s); the events of state changes since the last call."""
        ...

    def stats_section(self) -> dict:
        """This monitor's section of the stats document (JSON-ready)."""
        ...


class ModelAware(Protocol):
    """Optional for a monitor: told whenever a worker becomes the serving one (its backend, labels, input size)."""

    def on_model_ready(self, ready: WorkerReady) -> None:
        """A worker serves now (after the first start, a restart, a recycle or a model change)."""
        ...


class Reconfigurable(Protocol):
    """The optional part of a `Monitor`: follow a config reload without losing its state where it can."""

    def reconfigure(self, cfg: VigilConfig) -> None:
        """The running config changed (`budget`, `monitoring` or `cameras`): take the new settings and camera list."""
        ...
