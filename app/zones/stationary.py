"""Stationary objects: a tracked object whose box has not moved for `tracking.stationary_after_s`.

"Not moved" means the IoU of its box with where it stood at the start of its still stretch (the anchor) stays at
or above `tracking.stationary_iou`: detector jitter on a parked car keeps it well above, while a person walking
drops below within a fraction of a second. Once the IoU falls below, the object moves again: the anchor is
its new box, and it is no longer stationary.
"""

from __future__ import annotations

from dataclasses import dataclass


def box_iou(a: list[float], b: list[float]) -> float:
    """IoU (0..1) of two xyxy boxes in the same unit; 0 for degenerate boxes."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@dataclass(slots=True)
class Stillness:
    """Where an object stood when its still stretch began, and since when (monotonic s)."""

    anchor: list[float]
    since_mono: float
    stationary: bool = False

    def update(self, box: list[float], mono: float, after_s: float, min_iou: float) -> bool | None:
        """Fold one sighting in.

        Args:
            box: Its xyxy box now, pixels.
            mono: The sighting's instant, monotonic s.
            after_s: Still this long makes it stationary, s.
            min_iou: IoU with the anchor at or above this is "not moved".

        Returns:
            The new `stationary` value when it changed with this sighting, else None.
        """
        if box_iou(box, self.anchor) < min_iou:
            self.anchor, self.since_mono = list(box), mono
            if self.stationary:
                self.stationary = False
                return False
            return None
        if not self.stationary and mono - self.since_mono >= after_s:
            self.stationary = True
            return True
        return None
