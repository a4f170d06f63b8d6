"""The tracker's hint to the detector's scheduler for one camera (`TrackHint`, sent when it changes).

Moving objects keep the camera active and their predicted boxes become detection regions; stationary ones do not
keep it active and are looked at again every `tracking.stationary_interval_s`. Every change is a message on the
worker's pipe, so boxes are rounded outward to a grid (`GRID_PX`) and the recheck instant up to whole seconds:
an object that jitters by a pixel or two does not send a new hint.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from app.inference.protocol import TrackHint
from app.tracking.objects import TrackedObject

GRID_PX = 8  # boxes snap outward to this grid; a new box within one step of the last hint's keeps the last hint
MARGIN = 0.1  # predicted boxes grow by this fraction of their size on each side (prediction error)


def _snap(box: list[float], frame_wh: tuple[int, int]) -> tuple[float, float, float, float]:
    """The box clipped to the frame and rounded outward to `GRID_PX`."""
    w, h = frame_wh
    x1 = max(0, math.floor(box[0] / GRID_PX) * GRID_PX)
    y1 = max(0, math.floor(box[1] / GRID_PX) * GRID_PX)
    x2 = min(w, math.ceil(box[2] / GRID_PX) * GRID_PX)
    y2 = min(h, math.ceil(box[3] / GRID_PX) * GRID_PX)
    return (float(x1), float(y1), float(x2), float(y2))


def predicted_box(obj: TrackedObject, interval_s: float) -> list[float]:
    """Where the object's box will be one detection interval after its last sighting, grown by `MARGIN`.

    Constant velocity from its last two sightings (none seen yet: where it is now).

    Args:
        obj: The tracked object.
        interval_s: Time to the camera's next detection, s (`1 / detect.fps`).

    Returns:
        xyxy pixels (not clipped).
    """
    box = list(obj.box)
    if obj.prev_box is not None and obj.last_seen_mono > obj.prev_mono:
        k = interval_s / (obj.last_seen_mono - obj.prev_mono)
        box = [b + (b - p) * k for b, p in zip(box, obj.prev_box)]
    mx, my = (box[2] - box[0]) * MARGIN, (box[3] - box[1]) * MARGIN
    return [box[0] - mx, box[1] - my, box[2] + mx, box[3] + my]


def build_hint(
    camera: str,
    objects: Iterable[TrackedObject],
    frame_wh: tuple[int, int],
    interval_s: float,
    recheck_interval_s: float,
) -> TrackHint:
    """The hint for one camera from its tracked objects (announced or not: a new object needs looks too).

    Args:
        camera: The camera's name.
        objects: Its tracked objects.
        frame_wh: Frame (width, height), pixels: boxes are clipped to it.
        interval_s: The camera's detection interval, s (predicted boxes look this far ahead).
        recheck_interval_s: `tracking.stationary_interval_s`.

    Returns:
        `active` when some object is not stationary, `boxes` their predicted boxes, `recheck_mono` the earliest
        time a stationary object is due for a look (its last look + `recheck_interval_s`, rounded up to whole
        seconds; 0 when none), `recheck_boxes` the stationary objects' boxes. Boxes are in a stable order.
    """
    moving: list[TrackedObject] = []
    still: list[TrackedObject] = []
    for obj in sorted(objects, key=lambda o: o.track_id):
        (still if obj.stationary else moving).append(obj)
    boxes = tuple(dict.fromkeys(_snap(predicted_box(o, interval_s), frame_wh) for o in moving))
    recheck = min((o.last_look_mono + recheck_interval_s for o in still), default=0.0)
    recheck_boxes = tuple(dict.fromkeys(_snap(o.box, frame_wh) for o in still))
    return TrackHint(camera, bool(moving), boxes, float(math.ceil(recheck)), recheck_boxes)


def _within(new: tuple[float, ...], old: tuple[float, ...]) -> bool:
    return (
        new[0] >= old[0] - GRID_PX
        and new[1] >= old[1] - GRID_PX
        and new[2] <= old[2] + GRID_PX
        and (new[3] <= old[3] + GRID_PX)
    )


def settle(old: TrackHint | None, new: TrackHint) -> TrackHint:
    """`old` when `new` says the same up to a grid step (boxes each within one `GRID_PX` of the old ones), else `new`.

    A standing person's box jitters by a pixel or two, and its velocity from two sightings makes the predicted box
    jitter twice that: without this, every frame would send a hint.
    """
    if (
        old is None
        or (old.active, old.recheck_mono, old.recheck_boxes) != (new.active, new.recheck_mono, new.recheck_boxes)
        or len(old.boxes) != len(new.boxes)
        or not all(_within(n, o) for n, o in zip(new.boxes, old.boxes))
    ):
        return new
    return old
