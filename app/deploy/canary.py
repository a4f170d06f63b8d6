"""Canary frames: copies of the newest frames of every camera, for a candidate model to pass before it serves."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from app.ring import FrameRing


def newest_frames(rings: Mapping[str, FrameRing], per_camera: int) -> list[tuple[str, np.ndarray]]:
    """Copy up to `per_camera` of the newest frames of each camera out of its ring, newest first.

    A slot being rewritten while it is copied is skipped (its copy could be torn), so a camera may give
    fewer; a ring holds only `ring_slots` frames.

    Args:
        rings: Camera name -> its frame ring.
        per_camera: Frames wanted per camera (`model.deploy.canary_frames`).

    Returns:
        (camera, HxWx3 uint8 BGR copy) pairs, camera by camera.
    """
    frames: list[tuple[str, np.ndarray]] = []
    for camera, ring in rings.items():
        latest = ring.latest_seq
        taken = 0
        for seq in range(latest, 0, -1):
            if taken >= per_camera or seq <= latest - ring.spec.slots:
                break
            view = ring.read_seq(seq)
            image = view.copy() if view is not None else None
            if image is not None:
                frames.append((camera, image))
                taken += 1
    return frames
