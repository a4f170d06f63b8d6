from __future__ import annotations

import numpy as np
import pytest

from app.inference.decode import (
    DecodeParams,
    ModelShapeError,
    NmsOutputRoles,
    OutputLayout,
    YoloDecoder,
    decode_dense,
    decode_efficient_nms,
    decode_end2end,
    decode_yolov5,
    nms,
    resolve_nms_roles,
)
from app.letterbox import LetterboxGeometry


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
    det = dec([dense([[320, cy, 64, 64, 0.9, 0.0]])[None]], g)
    np.testing.assert_allclose(det.xyxy[0], [288, 104, 352, 168], atol=1e-3)
    dec = YoloDecoder(OutputLayout.END2END, 2, DecodeParams())
    rows = np.zeros((1, 300, 6), np.float32)
    rows[0, 0] = [288, cy - 32, 352, cy + 32, 0.8, 1]
    det = dec([rows], g)
    np.testing.assert_allclose(det.xyxy[0], [288, 104, 352, 168], atol=1e-3)
    assert det.class_id.tolist() == [1]


def v5rows(rows: list[list[float]], anchors: int = 20, nc: int = 2) -> np.ndarray:
    """rows of (cx, cy, w, h, objectness, class score...) -> YOLOv5 layout [anchors, 5+nc]."""
    out = np.zeros((anchors, 5 + nc), np.float32)
    out[: len(rows)] = np.asarray(rows, np.float32).reshape(-1, 5 + nc)
    return out


def test_yolov5_decode_scores_objectness_times_class() -> None:
    pred = v5rows(
        [
            [50, 50, 20, 20, 0.9, 1.0, 0.1],  # 0.9 class 0
            [51, 50, 20, 20, 0.8, 0.1, 1.0],  # overlaps, class 1: kept (class-aware)
            [52, 50, 20, 20, 0.9, 0.7, 0.0],  # 0.63 same class overlap: suppressed
            [200, 200, 10, 10, 0.5, 0.5, 0.0],  # 0.25: dropped (strict >)
            [300, 300, 10, 10, 0.6, 0.5, 0.0],  # 0.30
            [400, 400, 10, 10, 0.2, 1.0, 1.0],  # objectness under conf: never a candidate
        ]
    )
    det = decode_yolov5(pred, 2, DecodeParams(conf=0.25, iou=0.7))
    assert det.class_id.tolist() == [0, 1, 0]
    np.testing.assert_allclose(det.confidence, [0.9, 0.8, 0.3], atol=1e-6)
    np.testing.assert_allclose(det.xyxy[0], [40, 40, 60, 60])
    assert det.xyxy.dtype == np.float32 and det.confidence.dtype == np.float32


def test_yolov5_decode_agnostic_class_filter_max_det_and_empty() -> None:
    rows = [[50, 50, 20, 20, 0.9, 1.0, 0.1], [51, 50, 20, 20, 0.8, 0.1, 1.0], [300, 300, 10, 10, 0.5, 1.0, 0.0]]
    assert decode_yolov5(v5rows(rows), 2, DecodeParams(agnostic=True)).class_id.tolist() == [0, 0]
    assert decode_yolov5(v5rows(rows), 2, DecodeParams(classes=(1,))).class_id.tolist() == [1]
    det = decode_yolov5(v5rows(rows), 2, DecodeParams(max_det=1))
    assert len(det) == 1 and det.confidence[0] == pytest.approx(0.9)
    assert len(decode_yolov5(v5rows([]), 2, DecodeParams())) == 0
    assert len(decode_yolov5(v5rows([[50, 50, 20, 20, 0.9, 0.2, 0.2]]), 2, DecodeParams())) == 0  # 0.18


def test_yolov5_decode_equals_dense_decode_of_the_same_scores() -> None:
    """A YOLOv5 row with objectness 1 is a dense anchor: same boxes, scores, classes, order."""
    rng = np.random.default_rng(1)
    n = 500
    boxes = np.column_stack([rng.uniform(0, 640, (n, 2)), rng.uniform(5, 80, (n, 2))]).astype(np.float32)
    scores = rng.uniform(0, 1, (n, 3)).astype(np.float32)
    want = decode_dense(np.concatenate([boxes, scores], axis=1).T, 3, DecodeParams())
    got = decode_yolov5(np.concatenate([boxes, np.ones((n, 1), np.float32), scores], axis=1), 3, DecodeParams())
    assert len(want) > 10
    np.testing.assert_array_equal(got.xyxy, want.xyxy)
    np.testing.assert_array_equal(got.confidence, want.confidence)
    np.testing.assert_array_equal(got.class_id, want.class_id)


def test_decoder_maps_yolov5_rows_to_source_pixels() -> None:
    g = LetterboxGeometry.compute((272, 640), (640, 640))
    cy = g.top + 136
    dec = YoloDecoder(OutputLayout.YOLOV5, 1, DecodeParams())
    pred = v5rows([[320, cy, 64, 64, 0.9, 1.0]], anchors=8400, nc=1)[None]
    det = dec([pred], g)
    np.testing.assert_allclose(det.xyxy[0], [288, 104, 352, 168], atol=1e-3)
    assert det.class_id.tolist() == [0] and det.confidence[0] == pytest.approx(0.9)


# EfficientNMS_TRT outputs. ONNX Runtime cannot run the TensorRT plugin, so these are synthetic arrays
# laid out as the plugin writes them: the first num_dets rows valid, sorted by score, the rest stale memory.
K = 100
I32, F32 = np.dtype(np.int32), np.dtype(np.float32)


def nms_outputs(
    rows: list[list[float]], k: int = K, garbage: bool = True, float_classes: bool = False
) -> dict[str, np.ndarray]:
    """rows of (x1, y1, x2, y2, score, class) -> the four plugin outputs by role."""
    rng = np.random.default_rng(0)
    boxes = (rng.random((1, k, 4)) * 600).astype(np.float32) if garbage else np.zeros((1, k, 4), np.float32)
    scores = rng.random((1, k)).astype(np.float32) + 0.5 if garbage else np.zeros((1, k), np.float32)
    classes = rng.integers(0, 80, (1, k)) if garbage else np.zeros((1, k), np.int64)
    classes = classes.astype(np.float32 if float_classes else np.int32)
    r = np.asarray(rows, np.float32).reshape(-1, 6)
    boxes[0, : len(r)] = r[:, :4]
    scores[0, : len(r)] = r[:, 4]
    classes[0, : len(r)] = r[:, 5]
    return {
        "count": np.array([[len(r)]], np.int32),
        "boxes": boxes,
        "scores": scores,
        "classes": classes,
    }


def specs(*outs: tuple[str, tuple, np.dtype]) -> list[tuple[str, tuple, np.dtype]]:
    return list(outs)


STANDARD = specs(
    ("num_dets", (1, 1), I32), ("det_boxes", (1, K, 4), F32), ("det_scores", (1, K), F32), ("det_classes", (1, K), I32)
)


def test_nms_roles_standard_order() -> None:
    assert resolve_nms_roles(STANDARD) == NmsOutputRoles(count=0, boxes=1, scores=2, classes=3)


@pytest.mark.parametrize("order", [(3, 2, 1, 0), (1, 3, 0, 2), (2, 0, 3, 1)])
def test_nms_roles_by_shape_and_dtype_in_any_order(order: tuple[int, ...]) -> None:
    # Names deliberately say nothing: shape and dtype alone must place each tensor
    outs = [(f"output{i}", STANDARD[j][1], STANDARD[j][2]) for i, j in enumerate(order)]
    r = resolve_nms_roles(outs)
    assert [order[r.count], order[r.boxes], order[r.scores], order[r.classes]] == [0, 1, 2, 3]


def test_nms_roles_count_may_be_rank_one_and_dims_dynamic() -> None:
    outs = specs(("boxes", ("batch", -1, 4), F32), ("num", ("batch",), I32), ("classes", (1, -1), I32))
    outs.insert(2, ("scores", (1, -1), F32))
    assert resolve_nms_roles(outs) == NmsOutputRoles(count=1, boxes=0, scores=2, classes=3)


@pytest.mark.parametrize("swap", [False, True])
def test_nms_roles_float_classes_tie_broken_by_name(swap: bool) -> None:
    outs = specs(("num", (1, 1), I32), ("boxes", (1, K, 4), F32), ("scores", (1, K), F32), ("classes", (1, K), F32))
    if swap:
        outs[2], outs[3] = outs[3], outs[2]
    r = resolve_nms_roles(outs)
    assert (outs[r.scores][0], outs[r.classes][0], outs[r.count][0]) == ("scores", "classes", "num")


def test_nms_roles_single_detection_engine_needs_names() -> None:
    # K == 1: count and classes are both [1, 1] int32; only the names tell them apart
    outs = specs(("det_classes", (1, 1), I32), ("det_boxes", (1, 1, 4), F32), ("det_scores", (1, 1), F32))
    outs.append(("num_dets", (1, 1), I32))
    assert resolve_nms_roles(outs) == NmsOutputRoles(count=3, boxes=1, scores=2, classes=0)


def test_nms_roles_ambiguous_names_the_shapes() -> None:
    outs = [(f"out{i}", shape, F32 if i else I32) for i, (_, shape, _) in enumerate(STANDARD)]
    with pytest.raises(ModelShapeError, match=r"'out2' \[1, 100\] float32, 'out3' \[1, 100\] float32.*apart"):
        resolve_nms_roles(outs)


@pytest.mark.parametrize(
    ("outs", "why"),
    [
        (STANDARD[:3], "3 outputs"),
        ([*STANDARD[:2], ("det_scores", (1, 50), F32), STANDARD[3]], r"'det_scores' \[1, 50\] float32.*no output"),
        ([STANDARD[0], ("a", (1, K, 4), F32), ("b", (1, K, 4), F32), STANDARD[3]], "exactly one"),
        ([*STANDARD[:2], ("det_scores", (1, K), I32), STANDARD[3]], "no output assignment"),
    ],
)
def test_nms_roles_wrong_shapes(outs: list, why: str) -> None:
    with pytest.raises(ModelShapeError, match=why):
        resolve_nms_roles(outs)


def nms_decode(o: dict[str, np.ndarray], p: DecodeParams):
    return decode_efficient_nms(o["count"], o["boxes"], o["scores"], o["classes"], p)


def test_efficient_nms_reads_only_num_dets_rows() -> None:
    o = nms_outputs([[10, 10, 50, 50, 0.9, 3], [60, 60, 90, 90, 0.4, 7]])
    assert (o["scores"][0, 2:] > 0.5).all()  # the stale rows would all pass the threshold
    det = nms_decode(o, DecodeParams(conf=0.25))
    assert det.class_id.tolist() == [3, 7] and det.class_id.dtype == np.int32
    np.testing.assert_allclose(det.confidence, [0.9, 0.4], atol=1e-6)
    np.testing.assert_allclose(det.xyxy, [[10, 10, 50, 50], [60, 60, 90, 90]])
    o["count"][:] = 0
    assert len(nms_decode(o, DecodeParams())) == 0


def test_efficient_nms_conf_classes_max_det() -> None:
    rows = [[0, 0, 10, 10, 0.9, 1], [20, 0, 30, 10, 0.8, 0], [40, 0, 50, 10, 0.25, 1], [60, 0, 70, 10, 0.3, 1]]
    o = nms_outputs(rows)
    assert nms_decode(o, DecodeParams(conf=0.25)).class_id.tolist() == [1, 0, 1]  # 0.25 is not > 0.25
    det = nms_decode(o, DecodeParams(conf=0.25, classes=(1,)))
    np.testing.assert_allclose(det.confidence, [0.9, 0.3], atol=1e-6)
    det = nms_decode(o, DecodeParams(conf=0.25, classes=(1,), max_det=1))
    assert det.class_id.tolist() == [1] and det.confidence[0] == pytest.approx(0.9)
    det = nms_decode(nms_outputs(rows, float_classes=True), DecodeParams(conf=0.25, max_det=2))
    assert det.class_id.tolist() == [1, 0] and det.class_id.dtype == np.int32


def test_efficient_nms_bad_rows_and_counts_do_not_crash() -> None:
    rows = [
        [10, 10, 50, 50, np.nan, 0],  # NaN score
        [np.nan, 10, 50, 50, 0.9, 0],  # NaN box
        [50, 10, 10, 50, 0.9, 0],  # inverted box
        [10, 10, 50, 50, 0.9, -1],  # padding-style class id
        [10, 10, 50, 50, 0.9, np.nan],
        [10, 10, 10, 50, 0.8, 2],  # zero width: odd but a box, kept
        [10, 10, 50, 50, 0.7, 1],
    ]
    o = nms_outputs(rows, float_classes=True)
    det = nms_decode(o, DecodeParams())
    assert det.class_id.tolist() == [2, 1]
    for count in (1e9, -5, np.nan):  # count past K, negative, garbage (TensorRT hands back float32)
        o["count"] = np.array([[count]], np.float32)
        assert len(nms_decode(o, DecodeParams())) <= K


def test_end2end_bad_rows_do_not_crash() -> None:
    pred = np.zeros((10, 6), np.float32)
    pred[0] = [10, 10, 50, 50, np.nan, 0]
    pred[1] = [np.inf, 10, 50, 50, 0.9, 0]
    pred[2] = [50, 50, 10, 10, 0.9, 0]
    pred[3] = [10, 10, 50, 50, 0.9, np.nan]
    pred[4] = [10, 10, 50, 50, 0.6, 1]
    det = decode_end2end(pred, DecodeParams())
    assert det.class_id.tolist() == [1]


def test_efficient_nms_maps_to_source_like_end2end() -> None:
    g = LetterboxGeometry.compute((272, 640), (640, 640))
    rows = [[288, g.top + 104, 352, g.top + 168, 0.8, 1], [0, 0, 700, 700, 0.6, 0]]  # 2nd gets clipped
    e2e = np.zeros((1, 300, 6), np.float32)
    e2e[0, :2] = rows
    want = YoloDecoder(OutputLayout.END2END, 2, DecodeParams())([e2e], g)
    o = nms_outputs(rows)
    outs = [o["scores"], o["classes"], o["boxes"], o["count"]]  # an exporter's own order
    roles = NmsOutputRoles(count=3, boxes=2, scores=0, classes=1)
    with_roles = YoloDecoder(OutputLayout.EFFICIENT_NMS, 2, DecodeParams(), roles)
    guessed = YoloDecoder(OutputLayout.EFFICIENT_NMS, 2, DecodeParams())  # int32 classes: dtype decides
    for dec in (with_roles, guessed):
        det = dec(outs, g)
        np.testing.assert_allclose(det.xyxy, want.xyxy, atol=1e-4)
        np.testing.assert_allclose(det.confidence, want.confidence)
        assert det.class_id.tolist() == want.class_id.tolist() == [1, 0]
    np.testing.assert_allclose(want.xyxy[0], [288, 104, 352, 168], atol=1e-3)


def test_decoder_with_roles_decodes_all_float32_outputs() -> None:
    # When outputs arrive as float32 (float-class exporters, or a backend that converts), only the roles
    # from load (resolved on the model's declared dtypes and names) can tell scores from classes
    g = LetterboxGeometry.compute((640, 640), (640, 640))
    o = {k: v.astype(np.float32) for k, v in nms_outputs([[10, 10, 50, 50, 0.9, 5]]).items()}
    outs = [o["count"], o["boxes"], o["scores"], o["classes"]]
    roles = resolve_nms_roles(STANDARD)
    det = YoloDecoder(OutputLayout.EFFICIENT_NMS, 0, DecodeParams(), roles)(outs, g)
    assert det.class_id.tolist() == [5]
    with pytest.raises(ModelShapeError, match="output_roles"):
        YoloDecoder(OutputLayout.EFFICIENT_NMS, 0, DecodeParams())(outs, g)


def test_decoder_rejects_a_single_array() -> None:
    dec = YoloDecoder(OutputLayout.DENSE, 2, DecodeParams())
    with pytest.raises(TypeError, match="list of all model outputs"):
        dec(dense([])[None], LetterboxGeometry.compute((640, 640), (640, 640)))
