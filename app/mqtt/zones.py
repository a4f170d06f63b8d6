"""Retained zone counts (`<base>/<camera>/zone/<zone>/<label>/count`): which values to publish, and when.

Published when they change. Per configured zone: `all`, every label of the zone's `labels`, and every label
the pipeline counted in it (a label counted before and gone since goes back to 0), so a subscriber never
keeps a stale non-zero count.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from app.config import ZoneConfig
from app.mqtt.topics import Topics


class ZoneCountTopics:
    """The last published value per zone count topic, and the messages that bring the broker up to date.

    Args:
        topics: The appliance's topics.
    """

    def __init__(self, topics: Topics) -> None:
        self.topics = topics
        self._last: dict[str, dict[str, dict[str, int]]] = {}  # camera -> zone -> label -> published count

    def changes(
        self,
        camera: str,
        zones: Sequence[ZoneConfig],
        counts: Mapping[str, Mapping[str, int]],
        force: bool = False,
    ) -> list[tuple[str, str]]:
        """The `(topic, payload)` messages (payload the count as text) for the counts that changed.

        Args:
            camera: The camera's name.
            zones: The camera's configured zones (counts of other zone names are ignored).
            counts: `{zone: {label: n, "all": n}}` as `PipelineControl.zone_counts` gives it (a label or zone
                missing counts 0).
            force: Every value, changed or not (after a (re)connect or a config reload).

        Returns:
            The messages to publish retained, in zone order, `all` first.
        """
        last_cam = self._last.setdefault(camera, {})
        out: list[tuple[str, str]] = []
        for zone in zones:
            now = counts.get(zone.name, {})
            last = last_cam.get(zone.name, {})
            labels = ["all", *(zone.labels or [])]
            # Beyond `all` and the zone's own labels, only labels counted in it (now or before: back to 0 once).
            seen = {k for k, v in now.items() if v} | set(last)
            labels += sorted(k for k in seen if k not in labels)
            published = {}
            for label in labels:
                n = int(now.get(label, 0))
                published[label] = n
                if force or last.get(label) != n:
                    out.append((self.topics.zone_count(camera, zone.name, label), str(n)))
            last_cam[zone.name] = published
        for gone in set(last_cam) - {z.name for z in zones}:
            del last_cam[gone]  # a zone removed by a reload: its retained topics stay as they were
        return out
