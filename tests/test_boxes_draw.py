"""The one home of box helpers (`app.boxes`) and of box drawing (`app.draw`)."""

from __future__ import annotations

import numpy as np
import pytest

from app.boxes import normalize_xyxy, normalized_xyxy_list
from app.colors import class_color_bgr
from app.draw import draw_detections


def test_normalize_divides_x_by_width_and_y_by_height() -> None:
    out = normalize_xyxy(np.array([[64, 48, 320, 240], [0, 0, 640, 480]], np.float32), 640, 480)
    assert out.dtype == np.float64 and out.shape == (2, 4)
    assert out.tolist() == [[0.1, 0.1, 0.5, 0.5], [0.0, 0.0, 1.0, 1.0]]
    assert normalize_xyxy([[-10, 0, 700, 480]], 640, 480)[0].tolist() == pytest.approx([-10 / 640, 0, 700 / 640, 1])
    assert normalize_xyxy([], 640, 480).shape == (0, 4) and normalize_xyxy(np.zeros((0, 4)), 1, 1).shape == (0, 4)


def test_normalized_list_rounds_exactly_as_round_of_the_quotient() -> None:
    """The wire formats (MQTT `box_normalized`, the page's `box_norm`) keep their values to the last digit."""
    rng = np.random.default_rng(0)
    boxes = (rng.random((200, 4)) * 2000).astype(np.float32)
    for w, h in ((640, 272), (1920, 1080), (161, 97)):
        pixels = [[round(v, 1) for v in b] for b in boxes.tolist()]  # as `Detections.to_list` gives them
        expected = [
            [round(x1 / w, 4), round(y1 / h, 4), round(x2 / w, 4), round(y2 / h, 4)] for x1, y1, x2, y2 in pixels
        ]
        assert normalized_xyxy_list(pixels, w, h) == expected
        raw = boxes.tolist()  # unrounded float32 values, as tracked objects keep them
        expected = [[round(x1 / w, 4), round(y1 / h, 4), round(x2 / w, 4), round(y2 / h, 4)] for x1, y1, x2, y2 in raw]
        assert normalized_xyxy_list(boxes, w, h) == expected
    assert normalized_xyxy_list([], 640, 480) == []


@pytest.mark.parametrize(("xyxy", "w", "h", "needle"), [
    ([[1, 2, 3]], 640, 480, r"shape \(N, 4\) xyxy, got shape \(1, 3\)"),
    ([1, 2, 3, 4], 640, 480, r"got shape \(4,\)"),
    ([[1, 2, 3, 4]], 0, 480, "frame size must be positive, got width=0 height=480"),
])  # fmt: skip
def test_normalize_rejects_wrong_shapes_and_sizes(xyxy: list, w: int, h: int, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        normalize_xyxy(xyxy, w, h)


def test_draw_detections_draws_each_box_edge_in_its_class_colour() -> None:
    img = np.zeros((120, 200, 3), np.uint8)
    out = draw_detections(img, [[20.7, 30, 80, 100], [120, 40, 180, 110]], ["person", "car"], [0, 2], [0.9, 0.5])
    assert out is img, "drawn in place"
    assert tuple(int(v) for v in img[70, 20]) == class_color_bgr(0), "left edge at x=int(20.7)"
    assert tuple(int(v) for v in img[70, 80]) == class_color_bgr(0), "right edge"
    assert tuple(int(v) for v in img[80, 120]) == class_color_bgr(2) != class_color_bgr(0)
    assert not img[60:90, 40:60].any(), "the inside stays untouched"
    assert (img[15:28, 20:80] == 255).any(), "white label text above the box"


def test_draw_detections_labels_with_and_without_track_ids() -> None:
    """Snapshot text is `label conf #id`, overlay text `label conf`: the id makes the label wider."""
    plain, tracked = np.zeros((60, 300, 3), np.uint8), np.zeros((60, 300, 3), np.uint8)
    draw_detections(plain, [[10, 30, 50, 55]], ["person"], [0], [0.87])
    draw_detections(tracked, [[10, 30, 50, 55]], ["person"], [0], [0.87], track_ids=[12])
    text_cols = [np.flatnonzero((im[:28] == 255).all(axis=2).any(axis=0)).max() for im in (plain, tracked)]
    assert text_cols[1] > text_cols[0] + 10
    draw_detections(plain, np.zeros((0, 4)), [], [], [])  # nothing to draw is fine
    with pytest.raises(ValueError, match="expected 1 labels"):
        draw_detections(plain, [[10, 30, 50, 55]], ["person"], [0], [0.87], track_ids=[])
