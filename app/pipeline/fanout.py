"""Results, object events and system events from the pipeline to every service.

Per processed frame: the result becomes a frozen `ResultRecord`, the stages (tracking and object events)
enrich it in order, then each service gets the frame's object events and the record. A service that raises
is logged and skipped; the others and the frame path go on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

from app.pipeline.records import ResultRecord, SystemEvent
from app.pipeline.service import Service
from app.types import FrameResult

if TYPE_CHECKING:
    from app.tracking.objects import ObjectEvent

log = logging.getLogger(__name__)


class ResultStage(Protocol):
    """A step between the worker's answer and the services (tracking, later zones and filters)."""

    def on_model_ready(self, names: Mapping[int, str]) -> Sequence[tuple[str, ObjectEvent]]:
        """A (possibly different) model serves now; returns the (camera, event) of the objects this ends."""
        ...

    def process(self, record: ResultRecord) -> ResultRecord:
        """The record enriched (a new frozen record; the input is left as it was)."""
        ...


class ResultFanout:
    """Delivers everything the pipeline produces to its services, through its stages.

    Args:
        services: Receivers, called in this order.
        stages: Applied to each record in this order before any service sees it.
    """

    def __init__(self, services: Sequence[Service], stages: Sequence[ResultStage] = ()) -> None:
        self.services = list(services)
        self.stages = list(stages)
        self.names: Mapping[int, str] = {}

    def model_ready(self, names: Mapping[int, str]) -> None:
        """Tell stages and services which labels the serving model has."""
        self.names = dict(names)
        ended = [ev for stage in self.stages for ev in stage.on_model_ready(self.names)]
        for camera, event in ended:  # before the services learn the new labels: these objects had the old ones
            self.event(camera, event)
        self._each("on_model_ready", lambda s: s.on_model_ready(self.names))

    def result(
        self, r: FrameResult, received_mono_ns: int, dropped_before: int, model: Mapping[str, str] | None = None
    ) -> ResultRecord:
        """One processed frame: run the stages, then hand events and the record to every service.

        `model` names the model of the worker that produced it (see `ResultRecord.model`).
        """
        record = ResultRecord(r, self.names, received_mono_ns, dropped_before, model=model)
        for stage in self.stages:
            try:
                record = stage.process(record)
            except Exception:  # a broken stage loses its enrichment for this frame, not the frame
                log.exception("%s.process failed", type(stage).__name__)
        for event in record.events:
            self.event(record.camera, event, record)
        self._each("on_result", lambda s: s.on_result(record))
        return record

    def event(self, camera: str, event: ObjectEvent, record: ResultRecord | None = None) -> None:
        """One object event (from a frame, or from a control action such as detection switched off)."""
        self._each("on_event", lambda s: s.on_event(camera, event, record))

    def system_event(self, event: SystemEvent) -> None:
        """One supervisor action, to every service."""
        self._each("on_system_event", lambda s: s.on_system_event(event))

    def stats_sections(self) -> dict[str, dict]:
        """Every service's own part of the stats document, by key."""
        sections: dict[str, dict] = {}
        for service in self.services:
            sections.update(service.stats_sections())
        return sections

    def _each(self, hook: str, call: Callable[[Service], None]) -> None:
        for service in self.services:
            try:
                call(service)
            except Exception:  # one broken service must not stop the pipeline or the others
                log.exception("%s.%s failed", type(service).__name__, hook)
