"""Measurement services for `vigil bench` and tests.

They plug into a `LivePipeline` like any other service, so production runs carry none of this (compare
roboflow/inference's injected `PipelineWatchDog`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping

import numpy as np

from app.pipeline.records import ResultRecord
from app.pipeline.service import PipelineControl, ServiceBase
from app.supervisor.procinfo import rss_mb


class ResultTimes(ServiceBase):
    """When each result arrived (monotonic s) and its capture seq: the gaps and order around a handover."""

    def __init__(self) -> None:
        self.t: list[float] = []
        self.seqs: list[int] = []

    def on_result(self, record: ResultRecord) -> None:
        """Note the arrival time and seq."""
        self.t.append(time.monotonic())
        self.seqs.append(record.result.frame.seq)

    def gaps_around(self, switch_times: list[float], around_s: float) -> dict:
        """Result gaps around each handover, against 2x the median interval.

        Args:
            switch_times: When each handover happened (monotonic s).
            around_s: A handover's gap is the longest one within this many seconds of it.

        Returns:
            `median_interval_ms`, `bound_ms`, `per_switch_ms` (None where no result came near a switch),
            `gaps_over_bound`, `out_of_order_results`, and `gaps_s` (the raw gaps, s, for further figures).
        """
        t = np.asarray(self.t)
        gaps = np.diff(t)
        median = float(np.median(gaps))
        per_switch = []
        for at in switch_times:
            window = (t[1:] > at - around_s) & (t[1:] < at + around_s)
            per_switch.append(round(float(gaps[window].max()) * 1000, 1) if window.any() else None)
        return {
            "median_interval_ms": round(median * 1000, 1),
            "bound_ms": round(2 * median * 1000, 1),
            "per_switch_ms": per_switch,
            "gaps_over_bound": int((gaps > 2 * median).sum()),
            "out_of_order_results": int((np.diff(np.asarray(self.seqs)) <= 0).sum()),
            "gaps_s": gaps,
        }


class SampleRecorder(ServiceBase):
    """Per-result samples in milliseconds, in arrival order.

    Attributes:
        frame_ages_ms: Capture to receipt in the main process.
        inference_ms: The backend's inference alone.
        picked_to_received_ms: The worker's whole turn (pick, preprocess, infer, decode) plus the pipe.
    """

    def __init__(self) -> None:
        self.frame_ages_ms: list[float] = []
        self.inference_ms: list[float] = []
        self.picked_to_received_ms: list[float] = []

    def on_result(self, record: ResultRecord) -> None:
        """Append this result's samples."""
        r = record.result
        self.frame_ages_ms.append(record.frame_age_ms)
        self.inference_ms.append(r.timings.inference_ms)
        self.picked_to_received_ms.append((record.received_mono_ns - r.picked_mono_ns) / 1e6)


class StopAfterResults(ServiceBase):
    """Stops the pipeline once it delivered `n` results."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.seen = 0
        self._pipeline: PipelineControl | None = None

    async def start(self, pipeline: PipelineControl) -> None:
        """Remember the pipeline to stop."""
        self._pipeline = pipeline

    def on_result(self, record: ResultRecord) -> None:
        """Count; at `n` ask the pipeline to stop."""
        self.seen += 1
        if self.seen >= self.n and self._pipeline is not None:
            self._pipeline.request_stop(f"{self.n} results reached")


class RssSampler(ServiceBase):
    """Resident memory (MiB) of the main process and of the serving worker, every `period_s`.

    Attributes:
        rss_mb: `{"main": [...], "worker": [...]}`, one sample per period (the worker's once one serves).
    """

    def __init__(self, period_s: float = 1.0) -> None:
        self.period_s = period_s
        self.rss_mb: dict[str, list[float]] = {"main": [], "worker": []}
        self._task: asyncio.Task[None] | None = None
        self._pipeline: PipelineControl | None = None

    async def start(self, pipeline: PipelineControl) -> None:
        """Start sampling."""
        self._pipeline = pipeline
        self._task = asyncio.create_task(self._sample(), name="rss-sampler")

    async def stop(self) -> None:
        """Stop sampling."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _sample(self) -> None:
        while True:
            await asyncio.sleep(self.period_s)
            self.rss_mb["main"].append(rss_mb(None) or 0.0)
            info = self._pipeline.worker_info if self._pipeline is not None else None
            if info is not None:
                self.rss_mb["worker"].append(rss_mb(info.pid) or 0.0)


class SwitchTimes(ServiceBase):
    """Records when each new worker took over serving, from `on_model_ready`.

    `times` holds the monotonic instants (s) at which a new worker became the serving one after the first
    (recycles and restarts).
    """

    def __init__(self) -> None:
        self.times: list[float] = []
        self._ready_once = False

    def on_model_ready(self, names: Mapping[int, str]) -> None:
        """Record the switch (the first ready is the start, not a switch)."""
        if self._ready_once:
            self.times.append(time.monotonic())
        self._ready_once = True
