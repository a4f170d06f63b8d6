"""Object filters and masks of one camera (`cameras[].filters.<label>`, `cameras[].object_mask`).

A detection is dropped when its label's filter says so (score, area as a fraction of the frame, width/height
ratio, the label's `mask`) or when its bottom-centre point lies inside one of the camera's `object_mask`
polygons. Dropped detections never reach the tracker nor any service: the records services see carry only
the kept ones (see `TrackingStage.process`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from app.config import CameraConfig, ObjectFilterConfig
from app.polygons import Polygon, bottom_centres, contains, to_pixels
from app.types import Detections


class ObjectFilter:
    """The kept-or-dropped decision for one camera's detections.

    Polygons are converted to pixels once per frame size (a stream changing resolution converts again).

    Args:
        cam: The camera's config (`filters`, `object_mask`).
        names: The model's class id -> label (filters are keyed by label).
    """

    def __init__(self, cam: CameraConfig, names: Mapping[int, str]) -> None:
        self.object_mask: list[Polygon] = list(cam.object_mask)
        by_label = dict(cam.filters)
        # class id -> filter: the lookup per detection is by id (labels are matched as the model spells them)
        self.by_class: dict[int, ObjectFilterConfig] = {
            cid: by_label[label] for cid, label in names.items() if label in by_label
        }
        self.thresholds: dict[str, float] = {label: f.threshold for label, f in by_label.items()}
        self._px: dict[tuple[int, int], tuple[list[np.ndarray], dict[int, list[np.ndarray]]]] = {}

    @property
    def empty(self) -> bool:
        """Nothing to filter: no mask and no label filter."""
        return not self.object_mask and not self.by_class

    def _pixels(self, frame_wh: tuple[int, int]) -> tuple[list[np.ndarray], dict[int, list[np.ndarray]]]:
        px = self._px.get(frame_wh)
        if px is None:
            w, h = frame_wh
            px = (
                [to_pixels(p, w, h) for p in self.object_mask],
                {cid: [to_pixels(p, w, h) for p in f.mask] for cid, f in self.by_class.items() if f.mask},
            )
            self._px = {frame_wh: px}  # one size at a time: a camera has one resolution
        return px

    def keep(self, det: Detections, frame_wh: tuple[int, int]) -> np.ndarray:
        """Which detections pass.

        Args:
            det: The frame's N detections, xyxy pixels.
            frame_wh: Frame (width, height), pixels: areas are fractions of `width * height`, polygons scale
                to it.

        Returns:
            `(N,)` bool, True = kept.
        """
        n = len(det)
        keep = np.ones(n, bool)
        if not n or self.empty:
            return keep
        object_mask, label_masks = self._pixels(frame_wh)
        feet = bottom_centres(det.xyxy)
        for poly in object_mask:
            keep &= ~contains(poly, feet)
        if not self.by_class:
            return keep
        w, h = frame_wh
        xyxy = det.xyxy.astype(np.float64)
        bw, bh = xyxy[:, 2] - xyxy[:, 0], xyxy[:, 3] - xyxy[:, 1]
        area = bw * bh / max(w * h, 1)
        ratio = bw / np.maximum(bh, 1e-9)
        for cid, f in self.by_class.items():
            of = det.class_id == cid
            if not of.any():
                continue
            drop = (det.confidence < f.min_score) | (area < f.min_area) | (area > f.max_area) | (ratio < f.min_ratio)
            if f.max_ratio is not None:
                drop |= ratio > f.max_ratio
            for poly in label_masks.get(cid, ()):
                drop |= contains(poly, feet)
            keep &= ~(of & drop)
        return keep

    def apply(self, det: Detections, frame_wh: tuple[int, int]) -> Detections:
        """The kept detections (`det` itself when all pass)."""
        keep = self.keep(det, frame_wh)
        if keep.all():
            return det
        return Detections(det.xyxy[keep], det.confidence[keep], det.class_id[keep])
