"""Polygons in frame-relative coordinates: zones, motion masks and object masks.

A polygon is a list of `[x, y]` points, each 0..1 of the frame's width and height, so one config fits any
stream resolution. `check_polygon` is the one validation (config, reload); `to_pixels` and `contains` are the
one geometry every stage uses (zones, masks, the motion mask's raster).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

Polygon = list[list[float]]  # [[x, y], ...], 0..1 of the frame


def _segments_cross(p1: np.ndarray, p2: np.ndarray, q1: np.ndarray, q2: np.ndarray) -> bool:
    """Whether segments p1-p2 and q1-q2 cross or touch (orientation test, collinear overlap included)."""

    def orient(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> float:
        return float((b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0]))

    def on_segment(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> bool:
        return bool(min(a[0], b[0]) <= c[0] <= max(a[0], b[0]) and min(a[1], b[1]) <= c[1] <= max(a[1], b[1]))

    d1, d2 = orient(q1, q2, p1), orient(q1, q2, p2)
    d3, d4 = orient(p1, p2, q1), orient(p1, p2, q2)
    if ((d1 > 0) != (d2 > 0)) and ((d3 > 0) != (d4 > 0)) and d1 and d2 and d3 and d4:
        return True
    return bool(
        (d1 == 0 and on_segment(q1, q2, p1))
        or (d2 == 0 and on_segment(q1, q2, p2))
        or (d3 == 0 and on_segment(p1, p2, q1))
        or (d4 == 0 and on_segment(p1, p2, q2))
    )


def check_polygon(points: Sequence[Sequence[float]]) -> Polygon:
    """Validate one polygon: at least 3 `[x, y]` points, each coordinate 0..1, edges that do not cross.

    Returns:
        The points as `[[x, y], ...]` floats.

    Raises:
        ValueError: Fewer than 3 points, a point that is not two numbers, a coordinate outside 0..1, a zero
            area, or two non-adjacent edges that cross or touch (self-intersecting).
    """
    if len(points) < 3:
        raise ValueError(f"a polygon needs at least 3 points, got {len(points)}")
    out: Polygon = []
    for i, p in enumerate(points):
        if len(p) != 2:
            raise ValueError(f"point {i} must be [x, y], got {list(p)!r}")
        x, y = float(p[0]), float(p[1])
        if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
            raise ValueError(f"point {i} [{x}, {y}] is outside 0..1 (coordinates are fractions of the frame)")
        out.append([x, y])
    # A closed ring (last point = first, as GeoJSON writes it) and doubled points are the same polygon.
    distinct: Polygon = []
    for p in out:
        if not distinct or p != distinct[-1]:
            distinct.append(p)
    if len(distinct) > 1 and distinct[0] == distinct[-1]:
        distinct.pop()
    out = distinct
    if len(out) < 3:
        raise ValueError(f"a polygon needs at least 3 distinct points, got {len(out)}")
    pts = np.asarray(out, np.float64)
    n = len(pts)
    for i in range(n):
        for j in range(i + 1, n):
            if j == i + 1 or (i == 0 and j == n - 1):
                continue  # adjacent edges share a point
            if _segments_cross(pts[i], pts[(i + 1) % n], pts[j], pts[(j + 1) % n]):
                raise ValueError(f"the polygon is self-intersecting (edges {i} and {j} cross)")
    area = 0.5 * float(np.sum(pts[:, 0] * np.roll(pts[:, 1], -1) - np.roll(pts[:, 0], -1) * pts[:, 1]))
    if abs(area) < 1e-9:
        raise ValueError("the polygon has no area (its points are on one line)")
    return out


def to_pixels(polygon: Polygon, width: int, height: int) -> np.ndarray:
    """The polygon in pixels of a `width` x `height` frame: `(K, 2)` float32 xy."""
    return (np.asarray(polygon, np.float32) * np.array([width, height], np.float32)).astype(np.float32)


def contains(polygon_px: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Which points lie inside a polygon or on its edge.

    On the edge counts as inside: boxes are clipped to the frame, so an object touching the bottom of the frame
    has its bottom-centre exactly on the bottom edge, which a zone or mask drawn to the frame's edge must hold.

    Args:
        polygon_px: `(K, 2)` polygon vertices, pixels (`to_pixels`).
        points: `(N, 2)` xy pixels.

    Returns:
        `(N,)` bool.
    """
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    contour = np.asarray(polygon_px, np.float32).reshape(-1, 1, 2)
    return np.array([cv2.pointPolygonTest(contour, (float(x), float(y)), False) >= 0 for x, y in pts], dtype=bool)


def bottom_centres(xyxy: np.ndarray) -> np.ndarray:
    """`(N, 2)` bottom-centre points of `(N, 4)` xyxy boxes: where an object stands (the zone and mask anchor)."""
    b = np.asarray(xyxy, np.float64).reshape(-1, 4)
    return np.stack([(b[:, 0] + b[:, 2]) / 2.0, b[:, 3]], axis=1)
