"""A small IoU tracker with constant-velocity prediction.

Why not ByteTrack from a maintained package: it moved out of `supervision` into `trackers`, which pulls
the GUI build of OpenCV (libGL) and `rich` into an appliance runtime that ships headless OpenCV. At the
2-5 fps a CPU appliance processes, boxes of a walking person still overlap between results once the box
is moved by its last velocity, and matching is class-agnostic so a person whose label flips
(Normal -> Fall) keeps one track id — which is the event subscribers care about.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

import numpy as np

from app.types import Detections


@dataclass(slots=True)
class _Track:
    track_id: int
    box: np.ndarray  # xyxy
    velocity: np.ndarray  # per second, xyxy
    last_t: float
    misses: int = 0


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise intersection over union of two box sets.

    Args:
        a: ``(N, 4)`` xyxy boxes (any float dtype, any consistent unit).
        b: ``(M, 4)`` xyxy boxes.

    Returns:
        ``(N, M)`` IoU in 0..1 (float32 zeros when either set is empty); degenerate boxes give 0, not NaN.
    """
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)), np.float32)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


class IouTracker:
    """Greedy IoU matching of detections to tracks moved by their smoothed velocity; class-agnostic.

    Args:
        iou_threshold: Least IoU (0..1) between a track's predicted box and a detection to match them.
        max_age_s: A track not matched for longer than this (seconds) is dropped; its id is never reused. Tracks
            the caller holds (stationary objects, which the detector looks at only now and then) are exempt: the
            caller drops them with `forget`.
    """

    def __init__(self, iou_threshold: float = 0.2, max_age_s: float = 2.0) -> None:
        self.iou_threshold = iou_threshold
        self.max_age_s = max_age_s
        self._tracks: list[_Track] = []
        self._next_id = 1

    def update(self, det: Detections, t: float, hold: Collection[int] = ()) -> np.ndarray:
        """Assign a track id to every detection of one frame.

        Pairs are taken in order of falling IoU, each track and detection at most once; unmatched detections
        start new tracks.

        Args:
            det: The frame's detections (``xyxy`` ``(N, 4)`` pixels).
            t: The frame's time in seconds on a monotonic clock; must not go backwards.
            hold: Track ids kept however long unmatched (until `forget`).

        Returns:
            ``(N,)`` int64 track ids, all >= 1, in ``det``'s order.
        """
        self._tracks = [tr for tr in self._tracks if t - tr.last_t <= self.max_age_s or tr.track_id in hold]
        ids = np.zeros(len(det), np.int64)
        if self._tracks and len(det):
            # A held (stationary) track stays where it stood: its velocity is the detector's jitter, and times the
            # seconds between re-checks it would carry the box away from the object (a new id at every re-check).
            predicted = np.stack(
                [tr.box if tr.track_id in hold else tr.box + tr.velocity * (t - tr.last_t) for tr in self._tracks]
            )
            iou = iou_matrix(predicted, det.xyxy)
            pairs = sorted(((iou[i, j], i, j) for i, j in zip(*np.nonzero(iou >= self.iou_threshold))), reverse=True)
            used_t: set[int] = set()
            used_d: set[int] = set()
            for _, i, j in pairs:
                if i in used_t or j in used_d:
                    continue
                used_t.add(i)
                used_d.add(j)
                tr = self._tracks[i]
                dt = max(t - tr.last_t, 1e-3)
                new_box = det.xyxy[j].astype(np.float64)
                tr.velocity = 0.5 * tr.velocity + 0.5 * (new_box - tr.box) / dt  # smoothed
                tr.box, tr.last_t, tr.misses = new_box, t, 0
                ids[j] = tr.track_id
        for j in np.flatnonzero(ids == 0):
            tr = _Track(self._next_id, det.xyxy[j].astype(np.float64), np.zeros(4), t)
            self._next_id += 1
            self._tracks.append(tr)
            ids[j] = tr.track_id
        return ids

    def forget(self, track_ids: Iterable[int]) -> None:
        """Drop these tracks now (their objects ended); unknown ids are ignored."""
        gone = set(track_ids)
        self._tracks = [tr for tr in self._tracks if tr.track_id not in gone]
