"""Box colours by class id, the same in the page, the server-side preview boxes and MQTT snapshots.

Hues step by the golden angle, so neighbouring class ids (person 0, bicycle 1, car 2, ...) get clearly
different colours and any number of classes stays distinct; nothing depends on a label's name.
The page computes the same colours in app/web/static/overlay.js (classColor).
"""

from __future__ import annotations

import colorsys

GOLDEN_RATIO_CONJUGATE = 0.618033988749895
SATURATION, VALUE = 0.75, 0.95


def class_color_rgb(class_id: int) -> tuple[int, int, int]:
    """(r, g, b) 0..255 for a class id."""
    hue = (int(class_id) * GOLDEN_RATIO_CONJUGATE) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, SATURATION, VALUE)
    return round(r * 255), round(g * 255), round(b * 255)


def class_color_bgr(class_id: int) -> tuple[int, int, int]:
    """(b, g, r) 0..255 for OpenCV drawing."""
    r, g, b = class_color_rgb(class_id)
    return b, g, r
