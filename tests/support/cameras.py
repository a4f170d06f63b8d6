"""Camera config helpers for tests.

The defaults detect at most `detect.fps` (5) frames per second and, with motion detection on, only frames with
motion; tests that count on every frame being detected (rates, drops, latency, every result) say so with
`EVERY_FRAME` or `every_frame(...)`.
"""

from __future__ import annotations

from typing import Any

# Every frame is a candidate (no motion gating) and no fps cap: the detector takes the newest frame as fast as
# it can, as before scheduling.
EVERY_FRAME: dict[str, Any] = {"detect": {"fps": None}, "motion": {"enabled": False}}


def every_frame(camera: dict[str, Any]) -> dict[str, Any]:
    """A copy of a `cameras[]` entry that detects every frame it can (`EVERY_FRAME` under the entry's own keys).

    Args:
        camera: The camera's config dict (also a dumped one, which has every key): `EVERY_FRAME`'s keys win, its
            other `detect` / `motion` keys stay.

    Returns:
        The new dict.
    """
    out = dict(camera)
    for key, value in EVERY_FRAME.items():
        out[key] = {**camera.get(key, {}), **value}
    return out
