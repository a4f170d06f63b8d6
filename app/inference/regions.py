"""Where in a frame the detector looks: square crops around motion and tracked objects, or the whole frame.

A person 1/10 of a 1080p frame high is ~40 px after a 416 letterbox of the whole frame, and small objects vanish;
a crop at the model's input size around where something moves keeps it at full resolution (Frigate's regions).

How regions are chosen (README "Regions and batching"):

1. Every motion box and every tracked object's predicted box, grown by `MARGIN` of its size on each side, gets a
   square of side `max(model input side, grown box side)`, centred on it and shifted to lie inside the frame. A box
   that needs a square larger than `MAX_SCALE` x the model input, or larger than the frame's short side, makes the
   whole frame the region (a crop that big would be shrunk like the whole frame anyway).
2. Squares that overlap are merged (repeatedly) into the square around both, with the same limits.
3. More than `MAX_REGIONS` squares: the two whose merged square is smallest are merged until few enough remain.
4. Squares that together cover more than `MAX_COVERAGE` of the frame give the whole frame: running a few crops then
   costs more than one full-frame pass for little gain.

The whole frame is also the answer when regions are off (`cameras[].detect.regions: false`), when there is nothing
to look at (no motion, no tracked object: an idle or re-check pass), and when the frame is not larger than the model
input on both sides (a crop would not be any sharper).
"""

from __future__ import annotations

from collections.abc import Sequence

from app.types import Box

MARGIN = 0.2  # of a box's width/height added on each side: context around the object helps the detector
MAX_SCALE = 2.0  # largest crop side as a multiple of the model input side
MAX_REGIONS = 4  # crops per frame at most
MAX_COVERAGE = 0.5  # crops covering more than this fraction of the frame: detect on the whole frame instead


def full_frame(width: int, height: int) -> tuple[Box, ...]:
    """The whole frame as the one region: `((0, 0, width, height),)`."""
    return ((0, 0, width, height),)


def _square(cx: float, cy: float, side: int, width: int, height: int) -> Box:
    """The `side` x `side` square centred on (cx, cy), shifted to lie inside the frame (side <= both sides)."""
    x1 = min(max(round(cx - side / 2), 0), width - side)
    y1 = min(max(round(cy - side / 2), 0), height - side)
    return (x1, y1, x1 + side, y1 + side)


def _overlap(a: Box, b: Box) -> bool:
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


class _Planner:
    """The limits of one frame: model input side, largest crop side, frame size."""

    def __init__(self, width: int, height: int, base: int) -> None:
        self.width, self.height, self.base = width, height, base
        self.limit = min(int(MAX_SCALE * base), width, height)

    def around(self, x1: float, y1: float, x2: float, y2: float) -> Box | None:
        """The square around an xyxy extent (no margin added here); None when it would exceed the limit."""
        side = max(self.base, round(max(x2 - x1, y2 - y1)))
        if side > self.limit:
            return None
        return _square((x1 + x2) / 2, (y1 + y2) / 2, side, self.width, self.height)

    def merge(self, a: Box, b: Box) -> Box | None:
        return self.around(min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))


def plan_regions(
    frame_wh: tuple[int, int],
    motion_boxes: Sequence[Sequence[float]],
    track_boxes: Sequence[Sequence[float]],
    model_hw: tuple[int, int],
    enabled: bool = True,
) -> tuple[Box, ...]:
    """The regions to detect on in one frame.

    Args:
        frame_wh: Frame (width, height), pixels.
        motion_boxes: Where motion was seen, xyxy frame pixels.
        track_boxes: Predicted boxes of tracked objects to look at, xyxy frame pixels.
        model_hw: The model's input (height, width), pixels: the natural crop size (its longer side).
        enabled: `cameras[].detect.regions`; off: always the whole frame.

    Returns:
        xyxy integer pixel boxes inside the frame, at least one, at most `MAX_REGIONS`, sorted; either
        non-overlapping squares or `full_frame(*frame_wh)`.
    """
    width, height = int(frame_wh[0]), int(frame_wh[1])
    whole = full_frame(width, height)
    base = int(max(model_hw))
    boxes = [tuple(float(v) for v in b[:4]) for b in (*motion_boxes, *track_boxes)]
    if not enabled or not boxes or width <= base or height <= base:
        return whole
    plan = _Planner(width, height, base)
    squares: list[Box] = []
    for x1, y1, x2, y2 in boxes:
        x1, x2 = sorted((min(max(x1, 0.0), width), min(max(x2, 0.0), width)))
        y1, y2 = sorted((min(max(y1, 0.0), height), min(max(y2, 0.0), height)))
        mx, my = (x2 - x1) * MARGIN, (y2 - y1) * MARGIN
        sq = plan.around(x1 - mx, y1 - my, x2 + mx, y2 + my)
        if sq is None:
            return whole
        squares.append(sq)
    merged = _merge_overlapping(squares, plan)
    while merged is not None and len(merged) > MAX_REGIONS:
        merged = _merge_closest(merged, plan)
    if merged is None:
        return whole
    area = sum((b[2] - b[0]) * (b[3] - b[1]) for b in merged)
    if area > MAX_COVERAGE * width * height:
        return whole
    return tuple(sorted(merged))


def _merge_overlapping(squares: list[Box], plan: _Planner) -> list[Box] | None:
    """Merge overlapping squares until none overlap; None when a merged square exceeds the limit."""
    out = list(dict.fromkeys(squares))
    changed = True
    while changed:
        changed = False
        for i in range(len(out)):
            for j in range(i + 1, len(out)):
                if _overlap(out[i], out[j]):
                    m = plan.merge(out[i], out[j])
                    if m is None:
                        return None
                    out = [b for k, b in enumerate(out) if k not in (i, j)] + [m]
                    changed = True
                    break
            if changed:
                break
    return out


def _merge_closest(squares: list[Box], plan: _Planner) -> list[Box] | None:
    """Merge the pair whose merged square is smallest (then any new overlaps); None past the limit."""
    best: tuple[int, int, int] | None = None
    for i in range(len(squares)):
        for j in range(i + 1, len(squares)):
            a, b = squares[i], squares[j]
            side = max(max(a[2], b[2]) - min(a[0], b[0]), max(a[3], b[3]) - min(a[1], b[1]))
            if best is None or side < best[0]:
                best = (side, i, j)
    assert best is not None
    _, i, j = best
    m = plan.merge(squares[i], squares[j])
    if m is None:
        return None
    return _merge_overlapping([b for k, b in enumerate(squares) if k not in (i, j)] + [m], plan)
