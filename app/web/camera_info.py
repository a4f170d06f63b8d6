"""What the preview page needs to know of each camera (`GET /api/cameras`): its name and geometry, no secrets.

The source URL (which may hold credentials) and everything else of the camera's config stay out: the page
gets the zones, masks and detection rate it draws, all in 0..1 frame coordinates.
"""

from __future__ import annotations

from app.config import CameraConfig


def camera_document(cam: CameraConfig, viewers: int) -> dict:
    """One camera's entry of `GET /api/cameras`.

    Args:
        cam: The camera's config.
        viewers: WebRTC viewers watching it now.

    Returns:
        `{"name", "viewers", "zones": [{"name", "polygon", "labels"}], "object_mask": [polygon],
        "motion_mask": [polygon], "motion_enabled", "detect": {"fps", "idle_interval_s", "regions"}}`;
        polygons are `[[x, y], ...]` lists, 0..1 of the frame; `labels` None for all labels.
    """
    return {
        "name": cam.name,
        "viewers": viewers,
        "zones": [{"name": z.name, "polygon": z.polygon, "labels": z.labels} for z in cam.zones],
        "object_mask": list(cam.object_mask),
        "motion_mask": list(cam.motion.mask),
        "motion_enabled": cam.motion.enabled,
        "detect": {"fps": cam.detect.fps, "idle_interval_s": cam.detect.idle_interval_s, "regions": cam.detect.regions},
    }
