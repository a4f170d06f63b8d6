"""Zones of one camera (`cameras[].zones[]`): which tracked objects are in which zone, with inertia and loitering.

An object is inside a zone in a frame when its bottom-centre point (where it stands) is inside the zone's polygon
and its label is one of the zone's `labels` (all labels when none are given). Membership has inertia both ways:
it counts as in the zone after `inertia` consecutive frames inside, and as out again after `inertia` consecutive
frames outside, so a box jittering on the boundary does not flap. Only frames in which the object was detected
count; a frame that did not see it leaves its zones as they were.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from app.config import ZoneConfig
from app.polygons import bottom_centres, contains, to_pixels


@dataclass(slots=True)
class ZonePresence:
    """One object's standing in one zone.

    Attributes:
        inside: It counts as in the zone now.
        run: Consecutive frames contradicting `inside` (inside while out, outside while in).
        since_mono: When it last came to count as in, monotonic s.
        loitered: The loitering update for this stay went out.
    """

    inside: bool = False
    run: int = 0
    since_mono: float = 0.0
    loitered: bool = False


@dataclass(frozen=True, slots=True)
class ZoneChange:
    """What one sighting changed: zones the object came to count as in, and those it left (config order)."""

    entered: tuple[str, ...] = ()
    left: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.entered or self.left)


class CameraZones:
    """The zones of one camera, their polygons in pixels per frame size (converted once per size).

    Args:
        zones: The camera's `zones` in config order.
    """

    def __init__(self, zones: list[ZoneConfig]) -> None:
        self.zones = list(zones)
        self.names = [z.name for z in self.zones]
        self._px: dict[tuple[int, int], list[np.ndarray]] = {}

    def __bool__(self) -> bool:
        return bool(self.zones)

    def _pixels(self, frame_wh: tuple[int, int]) -> list[np.ndarray]:
        px = self._px.get(frame_wh)
        if px is None:
            px = [to_pixels(z.polygon, *frame_wh) for z in self.zones]
            self._px = {frame_wh: px}
        return px

    def inside(self, label: str, box: list[float], frame_wh: tuple[int, int]) -> list[bool]:
        """Per zone (config order): is this sighting inside (bottom-centre in the polygon, label allowed)?"""
        foot = bottom_centres(np.asarray(box, np.float64))
        return [
            (z.labels is None or label in z.labels) and bool(contains(poly, foot)[0])
            for z, poly in zip(self.zones, self._pixels(frame_wh))
        ]

    def update(
        self, state: dict[str, ZonePresence], label: str, box: list[float], frame_wh: tuple[int, int], mono: float
    ) -> ZoneChange:
        """Fold one sighting of an object into its per-zone state.

        Args:
            state: The object's zone name -> `ZonePresence` (entries are created here).
            label: Its label in this frame.
            box: Its xyxy box, pixels.
            frame_wh: Frame (width, height), pixels.
            mono: The frame's instant, monotonic s.

        Returns:
            The zones it came to count as in and those it left with this sighting.
        """
        entered: list[str] = []
        left: list[str] = []
        for zone, now_in in zip(self.zones, self.inside(label, box, frame_wh)):
            p = state.setdefault(zone.name, ZonePresence())
            if now_in == p.inside:
                p.run = 0
                continue
            p.run += 1
            if p.run < zone.inertia:
                continue
            p.inside, p.run = now_in, 0
            if now_in:
                p.since_mono, p.loitered = mono, False
                entered.append(zone.name)
            else:
                left.append(zone.name)
        return ZoneChange(tuple(entered), tuple(left))

    def current(self, state: dict[str, ZonePresence]) -> list[str]:
        """The zones the object counts as in now, config order."""
        return [name for name in self.names if (p := state.get(name)) is not None and p.inside]

    def loitering(self, state: dict[str, ZonePresence], mono: float) -> list[str]:
        """Zones whose `loitering_time_s` the object's current stay just reached (each once per stay).

        Marks them, so the next call does not return them again until the object leaves and comes back.
        """
        out = []
        for zone in self.zones:
            p = state.get(zone.name)
            if zone.loitering_time_s is None or p is None or not p.inside or p.loitered:
                continue
            if mono - p.since_mono >= zone.loitering_time_s:
                p.loitered = True
                out.append(zone.name)
        return out
