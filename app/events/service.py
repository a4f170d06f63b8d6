"""The event store as a pipeline service: object events and tracked frames in, entries and snapshots out.

Snapshots (`events.snapshots`): one JPEG per entry, of the frame with the object's box, scaled to
`events.snapshot_max_width` at `events.snapshot_quality`. Taken at the object's `new`, and replaced by a frame
where its score is higher (at most once per `SNAPSHOT_MIN_INTERVAL_S` per object, to bound the CPU), so an
entry shows its best frame. Rendering runs on one background thread (`SnapshotWorker`); only the frame copy
out of the ring happens on the loop.

Memory: snapshot bytes live only in entries the store keeps, at most `max_events` JPEGs (500 x ~30-60 KB at
640 px, quality 80: ~15-30 MB) and never more than `events.snapshot_max_mb`, plus `SNAPSHOT_BACKLOG` full frames
being rendered.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from app.config import VigilConfig
from app.events.snapshots import SnapshotJob, SnapshotWorker, grab_frame
from app.events.store import EventEntry, EventStore
from app.pipeline.records import ResultRecord
from app.pipeline.service import PipelineControl, ServiceBase
from app.tracking.objects import ObjectEvent

SNAPSHOT_MIN_INTERVAL_S = 1.0  # a better-scoring frame replaces an object's snapshot at most this often
SNAPSHOT_MIN_GAIN = 0.02  # and only when its score is higher by this much (score jitter is no better frame)
SNAPSHOT_BACKLOG = 4  # frames waiting for the snapshot thread at most (each a full frame: 6 MB at 1080p)


class EventsService(ServiceBase):
    """Keeps the recent tracked objects (`EventStore`) and their best-frame snapshots.

    Args:
        cfg: The whole config; its `events` section is read live (a reload updates it in place).
        snapshot_interval_s: A better frame replaces an object's snapshot at most this often, s.
    """

    def __init__(self, cfg: VigilConfig, snapshot_interval_s: float = SNAPSHOT_MIN_INTERVAL_S) -> None:
        self.cfg = cfg
        self.snapshot_interval_s = snapshot_interval_s
        self.store = EventStore(cfg.events.max_events, _mib(cfg.events.snapshot_max_mb))
        self.snapshots = SnapshotWorker("vigil-snapshots", SNAPSHOT_BACKLOG)
        self._pipeline: PipelineControl | None = None

    async def start(self, pipeline: PipelineControl) -> None:
        """Keep the pipeline for its frame rings."""
        self._pipeline = pipeline

    async def stop(self) -> None:
        """Stop the snapshot thread (entries stay readable)."""
        self.snapshots.close()

    async def apply_config(self, cfg: VigilConfig, changed: frozenset[str]) -> None:
        """A reloaded `events` section: the new bound applies now; snapshots switched off are dropped."""
        self.cfg = cfg
        if "events" in changed:
            self.store.trim(cfg.events.max_events, _mib(cfg.events.snapshot_max_mb))
            if not cfg.events.snapshots:
                self.store.drop_snapshots()

    def on_event(self, camera: str, event: ObjectEvent, record: ResultRecord | None) -> None:
        """Fold the event into its object's entry; a `new` object gets its first snapshot from `record`'s frame."""
        entry = self.store.on_event(camera, event)
        if record is not None and event.type != "end":
            self._maybe_snapshot(entry, record)

    def on_result(self, record: ResultRecord) -> None:
        """Follow the tracked objects' score and box; a clearly better frame replaces an object's snapshot."""
        ids = record.tracker_id
        if ids is None or not len(ids):
            return
        det = record.detections
        frame = record.result.frame
        for i, tid in enumerate(ids.tolist()):
            entry = self.store.active(record.camera, tid) if tid else None
            if entry is None:
                continue
            entry.observe(det.xyxy[i].tolist(), float(det.confidence[i]), (frame.width, frame.height))
            self._maybe_snapshot(entry, record)

    def _maybe_snapshot(self, entry: EventEntry, record: ResultRecord) -> None:
        ecfg = self.cfg.events
        if not ecfg.snapshots or self._pipeline is None:
            return
        mono = time.monotonic()
        if entry.snapshot_score >= 0 and (
            entry.score < entry.snapshot_score + SNAPSHOT_MIN_GAIN
            or mono - entry.snapshot_mono < self.snapshot_interval_s
        ):
            return
        ring = self._pipeline.rings.get(record.camera)
        image = grab_frame(ring, record.result.frame.seq) if ring is not None else None
        if image is None:
            return
        job = SnapshotJob(image, (entry.snapshot_object(),), ecfg.snapshot_max_width, ecfg.snapshot_quality)
        entry_id, number = entry.id, entry.number
        if self.snapshots.submit(job, lambda jpeg: self._store_snapshot(entry_id, number, jpeg)):
            entry.snapshot_score, entry.snapshot_mono = entry.score, mono

    def _store_snapshot(self, entry_id: str, number: int, jpeg: bytes) -> None:
        if self.cfg.events.snapshots:  # an entry dropped meanwhile: its snapshot goes with it (set_snapshot)
            self.store.set_snapshot(entry_id, jpeg, number)

    # ---- what the pipeline serves (PipelineControl.recent_events / event_snapshot) ------------

    def recent(
        self, camera: str | None = None, label: str | None = None, zone: str | None = None, limit: int = 50
    ) -> list[dict]:
        """Entries newest first, filtered (see `EventStore.query`)."""
        return self.store.query(camera, label, zone, limit)

    def snapshot(self, entry_id: str) -> bytes | None:
        """An entry's JPEG snapshot; None when the entry is unknown (or dropped) or has none yet."""
        entry = self.store.get(entry_id)
        return entry.snapshot if entry is not None else None

    def stats_sections(self) -> dict[str, dict]:
        """The `events` section of the stats document: entries, snapshots, their bytes, snapshots dropped."""
        return {"events": {**self.store.stats(), "snapshots_dropped": self.snapshots.dropped}}

    def on_model_ready(self, names: Mapping[int, str]) -> None:
        """Nothing: entries keep the labels they were announced with."""


def _mib(mb: float) -> int:
    """MiB -> bytes."""
    return int(mb * (1 << 20))
