"""ByteTrack from Roboflow's maintained `trackers` package, behind the IoU tracker's `update(det, t) -> ids`.

Optional (`pip install '.[tracking]'`): `trackers` pulls the GUI build of OpenCV.
"""

from __future__ import annotations

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
        # Thresholds follow this model's confidences (0.25-0.75); the package's 0.7 activation would
        # ignore most people.
        self._tracker = ByteTrackTracker(
            frame_rate=fps,
            lost_track_buffer=max(1, int(max_age_s * fps)),
            track_activation_threshold=0.3,
            high_conf_det_threshold=0.5,
            minimum_consecutive_frames=1,
        )

    def update(self, det: Detections, t: float) -> np.ndarray:
        """Assign a track id to every detection of one frame.

        Args:
            det: The frame's detections (``xyxy`` ``(N, 4)`` pixels, confidences, class ids).
            t: Frame time in seconds (unused: ByteTrack counts frames; kept for the tracker interface).

        Returns:
            ``(N,)`` int64 track ids >= 1, in ``det``'s order; 0 where ByteTrack keeps a detection out of every
            track (for example one below its confidence thresholds).
        """
        ids = np.zeros(len(det), np.int64)
        if not len(det):
            self._tracker.update(self._sv.Detections.empty())
            return ids
        d = self._sv.Detections(
            xyxy=det.xyxy, confidence=det.confidence, class_id=det.class_id, data={"idx": np.arange(len(det))}
        )
        out = self._tracker.update(d)
        if out.tracker_id is not None:
            for idx, tid in zip(out.data["idx"], out.tracker_id):
                if tid is not None and tid >= 0:
                    ids[int(idx)] = int(tid) + 1  # 0 means "untracked" here
        return ids
