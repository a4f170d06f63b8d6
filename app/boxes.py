"""Box helpers, in one place.

Pixel boxes to normalised boxes for MQTT (`box_normalized`), tracked objects and the preview page (`box_norm`).

Boxes are xyxy (`x1, y1, x2, y2`, top-left and bottom-right corners), as `Detections.xyxy` holds them.
Normalised coordinates divide x by the frame width and y by the frame height, so 0..1 covers the frame;
nothing is clipped (a box the model puts partly outside the frame stays partly outside 0..1).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

NORMALIZED_DECIMALS = 4  # 1e-4 of the frame: under a pixel up to 10000 px, and short JSON


def normalize_xyxy(xyxy: ArrayLike, width: int, height: int) -> np.ndarray:
    """Pixel boxes as fractions of the frame.

    Args:
        xyxy: `(N, 4)` boxes in pixels, `x1, y1, x2, y2`; any float or int dtype, or nested lists. An empty
            input (`[]` or shape `(0, 4)`) gives shape `(0, 4)`.
        width: Frame width in pixels (> 0).
        height: Frame height in pixels (> 0).

    Returns:
        `(N, 4)` float64 boxes, x divided by `width` and y by `height` (0..1 inside the frame), unrounded.

    Raises:
        ValueError: `xyxy` is not of shape `(N, 4)`, or `width`/`height` is not positive.

    Example:
        >>> normalize_xyxy([[64, 48, 320, 240]], 640, 480).tolist()
        [[0.1, 0.1, 0.5, 0.5]]
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"frame size must be positive, got width={width} height={height}")
    boxes = np.asarray(xyxy, np.float64)
    if boxes.size == 0:
        return np.zeros((0, 4), np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"expected boxes of shape (N, 4) xyxy, got shape {boxes.shape}")
    return boxes / np.array([width, height, width, height], np.float64)


def normalized_xyxy_list(xyxy: ArrayLike, width: int, height: int) -> list[list[float]]:
    """Pixel boxes as JSON-ready fractions of the frame, each rounded to 4 decimals.

    The rounding is Python's `round(value, 4)` on the float64 quotient, so a box comes out exactly as
    `[round(x1 / width, 4), round(y1 / height, 4), ...]` of its pixel coordinates.

    Args:
        xyxy: `(N, 4)` boxes in pixels, as for `normalize_xyxy`.
        width: Frame width in pixels (> 0).
        height: Frame height in pixels (> 0).

    Returns:
        N lists `[x1, y1, x2, y2]` of floats (0..1 inside the frame).

    Raises:
        ValueError: As `normalize_xyxy`.
    """
    return [[round(v, NORMALIZED_DECIMALS) for v in box] for box in normalize_xyxy(xyxy, width, height).tolist()]
