"""Box drawing, in one place: the MQTT snapshot and the server-side preview overlay draw the same way.

Colours come from the class id (`app.colors.class_color_bgr`), never from a label's name, so any model's
classes get the colours the page gives them.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from numpy.typing import ArrayLike

from app.colors import class_color_bgr

BOX_THICKNESS_PX = 2
LABEL_SCALE = 0.45  # cv2.FONT_HERSHEY_SIMPLEX scale: ~10 px high, readable on a 640 px preview
LABEL_COLOR_BGR = (255, 255, 255)


def draw_detections(
    image: np.ndarray,
    xyxy: ArrayLike,
    labels: Sequence[str],
    class_ids: Sequence[int],
    confidences: Sequence[float],
    track_ids: Sequence[int | None] | None = None,
) -> np.ndarray:
    """Draw boxes with their labels onto an image, in place.

    Each box gets a rectangle in its class colour and the text `label 0.87` (with `track_ids`:
    `label 0.87 #7`) just above its top-left corner (kept inside the image at the top).

    Args:
        image: `(H, W, 3)` uint8 BGR image, C-contiguous and writable; drawn on in place.
        xyxy: `(N, 4)` boxes in pixels of `image`, `x1, y1, x2, y2`; float coordinates are truncated to whole
            pixels.
        labels: N class labels.
        class_ids: N class ids (they pick the colour).
        confidences: N confidences, 0..1 (shown with two decimals).
        track_ids: N track ids to show as `#id`, or None to show none.

    Returns:
        `image`, for chaining.

    Raises:
        ValueError: The per-box sequences do not all have N items.
    """
    boxes = np.asarray(xyxy, np.float64).reshape(-1, 4)
    n = len(boxes)
    lengths = {len(labels), len(class_ids), len(confidences)} | ({len(track_ids)} if track_ids is not None else set())
    if lengths != {n}:
        raise ValueError(f"expected {n} labels, class ids, confidences (and track ids), got lengths {sorted(lengths)}")
    for i, box in enumerate(boxes.tolist()):
        x1, y1, x2, y2 = (int(v) for v in box)
        text = f"{labels[i]} {confidences[i]:.2f}"
        if track_ids is not None:
            text += f" #{track_ids[i]}"
        cv2.rectangle(image, (x1, y1), (x2, y2), class_color_bgr(class_ids[i]), BOX_THICKNESS_PX)
        cv2.putText(image, text, (x1, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, LABEL_SCALE, LABEL_COLOR_BGR, 1,
                    cv2.LINE_AA)  # fmt: skip
    return image
