"""The bounded in-memory store of recent tracked objects: one entry per object, for `GET /api/events`.

An entry is created by its object's `new` event and updated by its `update`, `alert` and `end` events (and by
the frames that track it: score and box). The oldest entries are dropped beyond `events.max_events`, their
snapshot with them, and beyond `events.snapshot_max_mb` of snapshot bytes the oldest entries lose their snapshot
(a few large 4K snapshots must not grow the process without bound). Nothing here touches frames or the loop:
`app.events.service` feeds it.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field

from app.boxes import normalized_xyxy_list
from app.tracking.objects import ObjectEvent

SNAPSHOT_PATH = "/api/events/{id}/snapshot.jpg"


@dataclass(slots=True)
class EventEntry:
    """One tracked object's entry (mutable: its events and frames update it in place).

    Times are ISO 8601 UTC strings as events carry them; boxes xyxy pixels of the camera's frame; scores 0..1.
    `snapshot_score` is the score of the frame the snapshot shows (or is being rendered from), -1 before any.
    """

    id: str
    camera: str
    track_id: int
    label: str
    start_time: str
    end_time: str | None = None
    top_score: float = 0.0
    score: float = 0.0
    current_zones: list[str] = field(default_factory=list)
    entered_zones: list[str] = field(default_factory=list)
    stationary: bool = False
    box: list[float] = field(default_factory=list)
    box_normalized: list[float] = field(default_factory=list)
    last_event: str = "new"
    class_id: int = 0
    snapshot: bytes | None = None
    snapshot_score: float = -1.0
    snapshot_mono: float = float("-inf")
    number: int = 0  # creation order in its store (the byte bound evicts the lowest first)

    def as_json(self) -> dict:
        """The entry as the API serves it (the shared event-store contract, README "Events")."""
        return {
            "id": self.id, "camera": self.camera, "label": self.label, "track_id": self.track_id,
            "start_time": self.start_time, "end_time": self.end_time,
            "top_score": round(self.top_score, 4), "score": round(self.score, 4),
            "current_zones": list(self.current_zones), "entered_zones": list(self.entered_zones),
            "stationary": self.stationary, "box": list(self.box), "box_normalized": list(self.box_normalized),
            "has_snapshot": self.snapshot is not None,
            "snapshot_url": SNAPSHOT_PATH.format(id=self.id) if self.snapshot is not None else None,
            "last_event": self.last_event,
        }  # fmt: skip

    def observe(self, box: list[float], score: float, frame_wh: tuple[int, int]) -> None:
        """A frame tracked the object again: its current box (pixels) and score."""
        self.box = [round(v, 1) for v in box]
        self.box_normalized = normalized_xyxy_list([box], *frame_wh)[0]
        self.score = score
        self.top_score = max(self.top_score, score)

    def snapshot_object(self) -> dict:
        """The object as `app.events.snapshots.render_snapshot` draws it."""
        return {"box": self.box, "label": self.label, "class_id": self.class_id, "confidence": self.score,
                "id": self.track_id}  # fmt: skip


class EventStore:
    """Recent tracked objects, oldest first in memory, served newest first.

    Args:
        max_events: Entries kept at most; the oldest go first (with their snapshots).
        max_snapshot_bytes: Snapshot bytes kept at most; the oldest entries' snapshots go first.
    """

    def __init__(self, max_events: int, max_snapshot_bytes: int = 64 << 20) -> None:
        self.max_events = max_events
        self.max_snapshot_bytes = max_snapshot_bytes
        self._entries: OrderedDict[str, EventEntry] = OrderedDict()
        self._active: dict[tuple[str, int], str] = {}  # (camera, track id) -> entry id, until its `end`
        self._snapshot_bytes = 0  # the sum of the kept entries' snapshot sizes
        self.snapshots_evicted = 0  # snapshots dropped for the byte bound (their entries stayed)
        # (entry number, id) of entries holding a snapshot, oldest first; entries dropped or evicted since are
        # skipped when met (and compacted away), so the byte bound costs O(log n) a snapshot, not a scan
        self._snapshot_heap: list[tuple[int, str]] = []
        self._created = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[EventEntry]:
        """Entries, oldest first."""
        return iter(list(self._entries.values()))

    def on_event(self, camera: str, event: ObjectEvent) -> EventEntry:
        """Fold one object event into its entry (created by `new`, or by the first event the store sees of it).

        Args:
            camera: The camera's name.
            event: The event; its `obj` is `TrackedObject.as_dict` (the zone fields are optional).

        Returns:
            The entry, updated.
        """
        obj = event.obj
        key = (camera, int(obj["id"]))
        entry = self._entries.get(self._active.get(key, ""))
        if entry is None or event.type == "new":
            entry = self._create(camera, obj)
        entry.label, entry.class_id = str(obj["label"]), int(obj.get("class_id", 0))
        entry.score = float(obj.get("confidence", entry.score))
        entry.top_score = max(entry.top_score, float(obj.get("best_confidence", 0.0)), entry.score)
        entry.box = list(obj.get("box", entry.box))
        entry.box_normalized = list(obj.get("box_normalized", entry.box_normalized))
        entry.current_zones = list(obj.get("current_zones", entry.current_zones))
        entry.entered_zones = list(obj.get("entered_zones", entry.entered_zones))
        entry.stationary = bool(obj.get("stationary", entry.stationary))
        entry.last_event = event.type
        if event.type == "end":
            entry.end_time = str(obj.get("last_seen") or entry.start_time)
            self._active.pop(key, None)
        return entry

    def _create(self, camera: str, obj: dict) -> EventEntry:
        start = str(obj.get("first_seen", ""))
        base = f"{_compact_time(start)}-{camera}-{int(obj['id'])}"
        entry_id, n = base, 1
        while entry_id in self._entries:  # a tracker restarted its ids within the same second
            n += 1
            entry_id = f"{base}-{n}"
        entry = EventEntry(entry_id, camera, int(obj["id"]), str(obj["label"]), start, number=self._created)
        self._created += 1
        self._entries[entry_id] = entry
        self._active[(camera, entry.track_id)] = entry_id
        self.trim(self.max_events)
        return entry

    def active(self, camera: str, track_id: int) -> EventEntry | None:
        """The entry of a camera's object still being tracked (no `end` yet), or None."""
        return self._entries.get(self._active.get((camera, track_id), ""))

    def get(self, entry_id: str) -> EventEntry | None:
        """An entry by id, or None when unknown or dropped."""
        return self._entries.get(entry_id)

    def trim(self, max_events: int, max_snapshot_bytes: int | None = None) -> None:
        """Keep at most `max_events` entries and `max_snapshot_bytes` of snapshots, the newest first.

        Both become the bounds from now on (`max_snapshot_bytes` None: the byte bound stays).
        """
        self.max_events = max_events
        if max_snapshot_bytes is not None:
            self.max_snapshot_bytes = max_snapshot_bytes
        while len(self._entries) > max_events:
            _, old = self._entries.popitem(last=False)
            self._snapshot_bytes -= len(old.snapshot or b"")
            key = (old.camera, old.track_id)
            if self._active.get(key) == old.id:
                del self._active[key]
        self._evict_snapshots()

    def set_snapshot(self, entry_id: str, jpeg: bytes, number: int | None = None) -> bool:
        """Keep `jpeg` as an entry's snapshot (replacing its previous one) within the byte bound.

        Args:
            entry_id: The entry.
            jpeg: The snapshot.
            number: The entry's `number` when the snapshot was asked for: an entry dropped meanwhile whose id a
                newer entry took (same second, camera and track id) does not get the old object's snapshot.

        Returns:
            False when the entry is gone (dropped meanwhile) or the JPEG alone exceeds the bound (not kept).
        """
        entry = self._entries.get(entry_id)
        if entry is None or (number is not None and entry.number != number) or len(jpeg) > self.max_snapshot_bytes:
            return False
        if entry.snapshot is None:
            heapq.heappush(self._snapshot_heap, (entry.number, entry_id))
        self._snapshot_bytes += len(jpeg) - len(entry.snapshot or b"")
        entry.snapshot = jpeg
        self._evict_snapshots(keep=entry_id)
        return True

    def _evict_snapshots(self, keep: str | None = None) -> None:
        """Drop the oldest entries' snapshots (not `keep`'s) until the kept bytes fit the bound."""
        heap = self._snapshot_heap
        kept: tuple[int, str] | None = None
        while self._snapshot_bytes > self.max_snapshot_bytes and heap:
            number, entry_id = heapq.heappop(heap)
            entry = self._entries.get(entry_id)
            if entry is None or entry.snapshot is None or entry.number != number:
                continue  # dropped or evicted since
            if entry_id == keep:
                kept = (number, entry_id)
                continue
            self._snapshot_bytes -= len(entry.snapshot)
            entry.snapshot = None
            self.snapshots_evicted += 1
        if kept is not None:
            heapq.heappush(heap, kept)
        if len(heap) > 2 * len(self._entries) + 16:  # many dropped entries' items: rebuild from the live ones
            self._snapshot_heap = [(e.number, e.id) for e in self._entries.values() if e.snapshot is not None]
            heapq.heapify(self._snapshot_heap)

    def query(
        self, camera: str | None = None, label: str | None = None, zone: str | None = None, limit: int = 50
    ) -> list[dict]:
        """Entries newest first, filtered, as JSON.

        Args:
            camera: Only this camera's objects (None: every camera).
            label: Only objects with this label.
            zone: Only objects that are or were in this zone (`current_zones` or `entered_zones`).
            limit: At most this many entries (>= 0).

        Returns:
            `EventEntry.as_json` dicts, newest (latest `new`) first.
        """
        out: list[dict] = []
        for entry in reversed(self._entries.values()):
            if len(out) >= limit:
                break
            if camera is not None and entry.camera != camera:
                continue
            if label is not None and entry.label != label:
                continue
            if zone is not None and zone not in entry.current_zones and zone not in entry.entered_zones:
                continue
            out.append(entry.as_json())
        return out

    def drop_snapshots(self) -> None:
        """Forget every snapshot (`events.snapshots` switched off)."""
        for entry in self._entries.values():
            entry.snapshot, entry.snapshot_score, entry.snapshot_mono = None, -1.0, float("-inf")
        self._snapshot_bytes = 0
        self._snapshot_heap = []

    def stats(self) -> dict:
        """Entries, tracked ones, snapshots, their bytes and snapshots dropped for the byte bound.

        Returns:
            `{"stored", "active", "snapshots", "snapshot_bytes", "snapshots_evicted"}`.
        """
        snaps = sum(1 for e in self._entries.values() if e.snapshot is not None)
        return {"stored": len(self._entries), "active": len(self._active), "snapshots": snaps,
                "snapshot_bytes": self._snapshot_bytes, "snapshots_evicted": self.snapshots_evicted}  # fmt: skip


def _compact_time(iso: str) -> str:
    """`2026-12-01T03:04:05.123Z` -> `20261201T030405` (URL-safe, sorts like the time); `t` when unknown."""
    digits = "".join(ch for ch in iso[:19] if ch.isdigit())
    return f"{digits[:8]}T{digits[8:14]}" if len(digits) >= 14 else "t"
