"""YOLO output decoding: dense heads (v8/v11, [1, 4+C, N]) with class-aware NMS, and NMS-free /
end-to-end heads ([1, N, 6]: x1, y1, x2, y2, score, class), mapped back to source pixels.

Semantics follow Ultralytics' `non_max_suppression` (strict `>` on thresholds, best class per box,
class offset trick for class-aware NMS, `max_det` after NMS) so our boxes match the reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np

from app.inference.preprocess import LetterboxGeometry
from app.messages import Detections

MAX_WH = 7680  # class offset for class-aware NMS; larger than any input side
MAX_NMS = 30000  # boxes fed into NMS at most


class OutputLayout(str, Enum):
    DENSE = "dense"  # [1, 4 + C, N], boxes cx,cy,w,h in input pixels, per-class scores
    END2END = "end2end"  # [1, N, 6], boxes x1,y1,x2,y2 in input pixels, score, class id


@dataclass(frozen=True, slots=True)
class DecodeParams:
    conf: float = 0.25
    iou: float = 0.7
    max_det: int = 300
    classes: tuple[int, ...] | None = None
    agnostic: bool = False


def box_iou_one_to_many(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_thres: float) -> np.ndarray:
    """Greedy NMS; returns kept indices in descending score order. Suppresses IoU > iou_thres."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        if order.size == 1:
            break
        rest = order[1:]
        order = rest[box_iou_one_to_many(boxes[i], boxes[rest]) <= iou_thres]
    return np.asarray(keep, dtype=np.int64)


def _xywh_to_xyxy(b: np.ndarray) -> np.ndarray:
    out = np.empty_like(b)
    half_w, half_h = b[:, 2] / 2, b[:, 3] / 2
    out[:, 0] = b[:, 0] - half_w
    out[:, 1] = b[:, 1] - half_h
    out[:, 2] = b[:, 0] + half_w
    out[:, 3] = b[:, 1] + half_h
    return out


def decode_dense(pred: np.ndarray, num_classes: int, p: DecodeParams) -> Detections:
    """pred: [4 + C (+extra), N] for one image; returns boxes in model-input pixels."""
    scores_all = pred[4 : 4 + num_classes]
    best = scores_all.max(axis=0)
    cand = np.flatnonzero(best > p.conf)
    if cand.size == 0:
        return Detections.empty()
    cls = scores_all[:, cand].argmax(axis=0).astype(np.int32)
    conf = best[cand].astype(np.float32)
    boxes = _xywh_to_xyxy(pred[:4, cand].T.astype(np.float32))
    if p.classes is not None:
        m = np.isin(cls, np.asarray(p.classes))
        boxes, conf, cls = boxes[m], conf[m], cls[m]
        if not conf.size:
            return Detections.empty()
    if conf.size > MAX_NMS:
        top = np.argsort(-conf, kind="stable")[:MAX_NMS]
        boxes, conf, cls = boxes[top], conf[top], cls[top]
    offset = 0.0 if p.agnostic else cls[:, None].astype(np.float32) * MAX_WH
    keep = nms(boxes + offset, conf, p.iou)[: p.max_det]
    return Detections(boxes[keep], conf[keep], cls[keep])


def decode_end2end(pred: np.ndarray, p: DecodeParams) -> Detections:
    """pred: [N, 6] (x1, y1, x2, y2, score, class) for one image, already NMS'd by the model."""
    m = pred[:, 4] > p.conf
    if p.classes is not None:
        m &= np.isin(pred[:, 5].astype(np.int32), np.asarray(p.classes))
    sel = pred[m][: p.max_det].astype(np.float32)
    return Detections(sel[:, :4].copy(), sel[:, 4].copy(), sel[:, 5].astype(np.int32))


class YoloDecoder:
    """Decodes the raw output of one image and maps boxes to the source frame."""

    def __init__(self, layout: OutputLayout, num_classes: int, params: DecodeParams) -> None:
        self.layout = layout
        self.num_classes = num_classes
        self.params = params

    def __call__(self, output: np.ndarray, geometry: LetterboxGeometry) -> Detections:
        pred = output[0]
        if self.layout is OutputLayout.DENSE:
            det = decode_dense(pred, self.num_classes, self.params)
        else:
            det = decode_end2end(pred, self.params)
        if len(det):
            geometry.boxes_to_source(det.xyxy)
        return det
