from __future__ import annotations

import numpy as np
import pytest

from app.inference.decode import DecodeParams, OutputLayout, YoloDecoder, decode_dense, decode_end2end, nms
from app.inference.preprocess import LetterboxGeometry


def dense(rows: list[list[float]], anchors: int = 20, nc: int = 2) -> np.ndarray:
    """rows of (cx, cy, w, h, score per class...) -> [4+nc, anchors]."""
    out = np.zeros((4 + nc, anchors), np.float32)
    out[:, : len(rows)] = np.asarray(rows, np.float32).T
    return out


def test_nms_suppresses_overlaps_keeps_order() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 9]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.95], np.float32)
    keep = nms(boxes, scores, 0.5)
    assert keep.tolist() == [3, 2]


def test_nms_threshold_is_strict() -> None:
    boxes = np.array([[0, 0, 10, 10], [5, 0, 15, 10]], np.float32)  # IoU = 50/150 = 1/3
    scores = np.array([0.9, 0.8], np.float32)
    assert nms(boxes, scores, 1 / 3 + 1e-6).tolist() == [0, 1]
    assert nms(boxes, scores, 0.3).tolist() == [0]


def test_dense_decode_filters_and_is_class_aware() -> None:
    pred = dense(
        [
            [50, 50, 20, 20, 0.9, 0.1],  # class 0
            [51, 50, 20, 20, 0.1, 0.8],  # overlaps but class 1: kept (class-aware)
            [52, 50, 20, 20, 0.7, 0.0],  # same class overlap: suppressed
            [200, 200, 10, 10, 0.25, 0.0],  # exactly at threshold: dropped (strict >)
            [300, 300, 10, 10, 0.26, 0.0],
        ]
    )
    det = decode_dense(pred, 2, DecodeParams(conf=0.25, iou=0.7))
    assert det.class_id.tolist() == [0, 1, 0]
    np.testing.assert_allclose(det.confidence, [0.9, 0.8, 0.26], atol=1e-6)
    np.testing.assert_allclose(det.xyxy[0], [40, 40, 60, 60])


def test_dense_decode_agnostic_and_class_filter_and_max_det() -> None:
    rows = [[50, 50, 20, 20, 0.9, 0.1], [51, 50, 20, 20, 0.1, 0.8], [300, 300, 10, 10, 0.5, 0.0]]
    det = decode_dense(dense(rows), 2, DecodeParams(agnostic=True))
    assert det.class_id.tolist() == [0, 0]
    det = decode_dense(dense(rows), 2, DecodeParams(classes=(1,)))
    assert det.class_id.tolist() == [1]
    det = decode_dense(dense(rows), 2, DecodeParams(max_det=1))
    assert len(det) == 1 and det.confidence[0] == pytest.approx(0.9)


def test_dense_decode_empty() -> None:
    assert len(decode_dense(dense([]), 2, DecodeParams())) == 0


def test_end2end_decode() -> None:
    pred = np.zeros((300, 6), np.float32)
    pred[0] = [10, 10, 50, 50, 0.9, 1]
    pred[1] = [60, 60, 90, 90, 0.2, 0]
    pred[2] = [5, 5, 15, 15, 0.5, 0]
    det = decode_end2end(pred, DecodeParams(conf=0.25))
    assert det.class_id.tolist() == [1, 0]
    det = decode_end2end(pred, DecodeParams(conf=0.25, classes=(0,)))
    assert det.class_id.tolist() == [0]


def test_decoder_maps_to_source_pixels() -> None:
    g = LetterboxGeometry.compute((272, 640), (640, 640))
    cy = g.top + 136  # centre of the image content in input pixels
    dec = YoloDecoder(OutputLayout.DENSE, 2, DecodeParams())
    det = dec(dense([[320, cy, 64, 64, 0.9, 0.0]])[None], g)
    np.testing.assert_allclose(det.xyxy[0], [288, 104, 352, 168], atol=1e-3)
    dec = YoloDecoder(OutputLayout.END2END, 2, DecodeParams())
    rows = np.zeros((1, 300, 6), np.float32)
    rows[0, 0] = [288, cy - 32, 352, cy + 32, 0.8, 1]
    det = dec(rows, g)
    np.testing.assert_allclose(det.xyxy[0], [288, 104, 352, 168], atol=1e-3)
    assert det.class_id.tolist() == [1]
