from __future__ import annotations

import cv2
import numpy as np
import pytest

from app.letterbox import PAD_VALUE, LetterboxGeometry, Preprocessor


def reference_letterbox(img: np.ndarray, new: int = 640) -> np.ndarray:
    """Ultralytics' LetterBox(auto=False, center=True) written out independently."""
    h, w = img.shape[:2]
    r = min(new / h, new / w)
    nw, nh = max(round(w * r), 1), max(round(h * r), 1)
    dw, dh = (new - nw) / 2, (new - nh) / 2
    if (w, h) != (nw, nh):
        img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    return cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3)


@pytest.mark.parametrize(
    "shape", [(272, 640), (480, 640), (720, 1280), (1080, 810), (333, 517), (640, 640), (50, 3000)]
)
def test_letterbox_matches_reference(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, (*shape, 3), dtype=np.uint8)
    canvas, g = Preprocessor((640, 640)).letterbox(img)
    np.testing.assert_array_equal(canvas, reference_letterbox(img))
    assert g.src_hw == shape


def test_tensor_is_rgb_nchw_unit_range() -> None:
    img = np.zeros((100, 200, 3), np.uint8)
    img[..., 0] = 255  # blue in BGR
    tensor, _ = Preprocessor((64, 64))(img)
    assert tensor.shape == (1, 3, 64, 64) and tensor.dtype == np.float32
    # centre pixel: blue is the last RGB channel after the swap
    assert tensor[0, 2, 32, 32] == pytest.approx(1.0)
    assert tensor[0, 0, 32, 32] == pytest.approx(0.0)
    # padding rows are 114/255 in every channel
    assert tensor[0, :, 0, 0] == pytest.approx([PAD_VALUE / 255] * 3)


def test_canvas_reused_and_padding_reset_on_size_change() -> None:
    pre = Preprocessor((64, 64))
    wide = np.full((10, 64, 3), 7, np.uint8)
    tall = np.full((64, 10, 3), 9, np.uint8)
    a, _ = pre.letterbox(wide)
    b, _ = pre.letterbox(tall)
    assert a is b  # one buffer
    np.testing.assert_array_equal(b, reference_letterbox(tall, 64))


def test_boxes_map_back_to_source() -> None:
    g = LetterboxGeometry.compute((272, 640), (640, 640))
    # a box covering the whole resized image maps to the whole source frame
    boxes = np.array([[0, g.top, 640, g.top + g.resized_wh[1]]], np.float32)
    np.testing.assert_allclose(g.boxes_to_source(boxes), [[0, 0, 640, 272]], atol=1e-3)
    # boxes in the padding are clipped to the frame
    out = g.boxes_to_source(np.array([[-50, 0, 700, 10]], np.float32))
    assert out[0, 0] == 0 and out[0, 1] == 0 and out[0, 2] == 640


def test_rejects_non_bgr_input() -> None:
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        Preprocessor((64, 64)).letterbox(np.zeros((10, 10), np.uint8))
