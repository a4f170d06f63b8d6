"""ByteTrack from Roboflow's maintained `trackers` package, behind the IoU tracker's `update(det, t) -> ids`.

Optional (`pip install '.[tracking]'`): `trackers` pulls the GUI build of OpenCV.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

import numpy as np

from app.types import Detections


class ByteTrack:
    """ByteTrack (Zhang et al. 2022, via ``trackers.ByteTrackTracker``) with thresholds for this model.

    Args:
        fps: Expected result rate in frames per second (ByteTrack counts lost time in frames).
        max_age_s: How long a lost track is kept, in seconds (``max_age_s * fps`` frames, at least 1).

    Raises:
        ImportError: The ``tracking`` extra (``trackers``, ``supervision``) is not installed.
    """

    def __init__(self, fps: float = 5.0, max_age_s: float = 2.0) -> None:
        try:
            import supervision as sv
            from trackers import ByteTrackTracker
        except ImportError as exc:
            raise ImportError(
                "tracking.tracker: bytetrack needs the `tracking` extra: pip install '.[tracking]'"
            ) from exc
        self._sv = sv
        self._last: dict[int, tuple[np.ndarray, int]] = {}  # track id -> last box, class id (for held tracks)
        # Thresholds follow this model's confidences (0.25-0.75); the package's 0.7 activation would
        # ignore most people.
        self._tracker = ByteTrackTracker(
            frame_rate=fps,
            lost_track_buffer=max(1, int(max_age_s * fps)),
            track_activation_threshold=0.3,
            high_conf_det_threshold=0.5,
            minimum_consecutive_frames=1,
        )

    def update(self, det: Detections, t: float, hold: Collection[int] = ()) -> np.ndarray:
        """Assign a track id to every detection of one frame.

        Held tracks (stationary objects the detector looks at only now and then) that no detection of this frame
        overlaps are fed to ByteTrack at their last box, so its frame-counted loss does not drop them; those
        stand-ins are no detections and get no id in the answer. The caller ends them with `forget`.

        Args:
            det: The frame's detections (``xyxy`` ``(N, 4)`` pixels, confidences, class ids).
            t: Frame time in seconds (unused: ByteTrack counts frames; kept for the tracker interface).
            hold: Track ids kept however long unmatched (until `forget`).

        Returns:
            ``(N,)`` int64 track ids >= 1, in ``det``'s order; 0 where ByteTrack keeps a detection out of every
            track (for example one below its confidence thresholds).
        """
        from app.tracking.iou_tracker import iou_matrix

        n = len(det)
        ids = np.zeros(n, np.int64)
        held = [(tid, *self._last[tid]) for tid in sorted(hold) if tid in self._last]
        if held:
            boxes = np.stack([b for _, b, _ in held]).astype(np.float32)
            near = np.asarray(iou_matrix(boxes, det.xyxy) >= 0.3).reshape(len(held), n)
            overlapped = [bool(near[k].any()) for k in range(len(held))]
            held = [h for h, o in zip(held, overlapped) if not o]  # a real detection there: ByteTrack matches it
        xyxy = np.concatenate([det.xyxy, *[b[None].astype(np.float32) for _, b, _ in held]]) if held else det.xyxy
        if not len(xyxy):
            self._tracker.update(self._sv.Detections.empty())
            return ids
        conf = np.concatenate([det.confidence, np.ones(len(held), np.float32)])
        cls = np.concatenate([det.class_id, np.asarray([c for _, _, c in held], np.int32)])
        d = self._sv.Detections(xyxy=xyxy, confidence=conf, class_id=cls, data={"idx": np.arange(len(xyxy))})
        out = self._tracker.update(d)
        if out.tracker_id is not None:
            for idx, tid in zip(out.data["idx"], out.tracker_id):
                if tid is not None and tid >= 0 and int(idx) < n:
                    ids[int(idx)] = int(tid) + 1  # 0 means "untracked" here
                    self._last[int(tid) + 1] = (det.xyxy[int(idx)].copy(), int(det.class_id[int(idx)]))
        return ids

    def forget(self, track_ids: Iterable[int]) -> None:
        """Stop holding these tracks (their objects ended): ByteTrack loses them after its own buffer."""
        for tid in track_ids:
            self._last.pop(tid, None)
