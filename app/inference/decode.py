"""YOLO output decoding for the four head layouts, mapped back to source pixels.

Dense heads (v8/v11, [1, 4+C, N]) with class-aware NMS, YOLOv5-style heads ([1, N, 5+C]: cx, cy, w, h,
objectness, class scores) through the same NMS, NMS-free / end-to-end heads ([1, N, 6]: x1, y1, x2, y2,
score, class), and TensorRT engines with the EfficientNMS_TRT plugin built in (four outputs: count, boxes,
scores, classes).

Semantics follow Ultralytics' `non_max_suppression` (strict `>` on thresholds, best class per box,
class offset trick for class-aware NMS, `max_det` after NMS) so our boxes match the reference.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np

from app.letterbox import LetterboxGeometry
from app.types import Detections

MAX_WH = 7680  # class offset for class-aware NMS; larger than any input side
MAX_NMS = 30000  # boxes fed into NMS at most
_INT32_MAX = np.iinfo(np.int32).max


class OutputLayout(str, Enum):
    """How a model's outputs encode detections (the value is the config and cache spelling)."""

    DENSE = "dense"  # [1, 4 + C, N], boxes cx,cy,w,h in input pixels, per-class scores
    END2END = "end2end"  # [1, N, 6], boxes x1,y1,x2,y2 in input pixels, score, class id
    # YOLOv5 export (also v7, and exporters that copy it): [1, N, 5 + C], boxes cx,cy,w,h in input pixels,
    # objectness, per-class scores; score = objectness * class score. With one class it is [1, N, 6], the
    # shape of END2END: model_info.py tells them apart
    YOLOV5 = "yolov5"
    # TensorRT EfficientNMS_TRT: count [1, 1], boxes [1, K, 4] x1,y1,x2,y2 in input pixels, scores [1, K],
    # classes [1, K]; output order and names depend on the exporter (see NmsOutputRoles)
    EFFICIENT_NMS = "efficient_nms"


class ModelShapeError(ValueError):
    """The model is not a YOLO detector we can decode."""


@dataclass(frozen=True, slots=True)
class NmsOutputRoles:
    """Which model output (index into the outputs list) holds each EfficientNMS tensor.

    Exporters disagree on order and names, so this is worked out once from shapes and dtypes at load
    (resolve_nms_roles) instead of assumed.
    """

    count: int
    boxes: int
    scores: int
    classes: int


@dataclass(frozen=True, slots=True)
class DecodeParams:
    """Thresholds and filters applied while decoding, as in Ultralytics' ``predict``.

    Attributes:
        conf: Keep scores strictly above this, 0..1.
        iou: NMS suppresses boxes whose IoU with a better one is strictly above this, 0..1 (not used for
            heads that are already NMS'd).
        max_det: At most this many detections per image, best first.
        classes: Keep only these class ids; None keeps all.
        agnostic: NMS across classes instead of per class.
    """

    conf: float = 0.25
    iou: float = 0.7
    max_det: int = 300
    classes: tuple[int, ...] | None = None
    agnostic: bool = False


Dim = int | str | None  # str/None/negative for dynamic dimensions (ONNX symbolic, TensorRT -1)

# Substrings of output names per role, used only to break ties that shape and dtype leave open
_ROLE_WORDS: dict[str, tuple[str, ...]] = {
    "count": ("num", "count"),
    "scores": ("score", "conf"),
    "classes": ("class", "label", "cls"),
}
_NMS_EXPECTED = (
    "expected EfficientNMS outputs num_dets [1, 1] int, boxes [1, K, 4] float, scores [1, K] float, classes [1, K] int"
)


def format_shape(shape: Sequence[Dim]) -> str:
    """A shape for messages, e.g. ``[1, 84, 8400]`` or ``[batch, 84, anchors]``."""
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _dim_fits(dim: Dim, want: Dim) -> bool:
    # A dynamic dimension on either side cannot rule an assignment out
    if not isinstance(dim, int) or dim < 0 or not isinstance(want, int) or want < 0:
        return True
    return dim == want


def resolve_nms_roles(outputs: Sequence[tuple[str, Sequence[Dim], np.dtype]]) -> NmsOutputRoles:
    """Identify count/boxes/scores/classes among four (name, shape, dtype) outputs.

    Boxes are the one [1, K, 4]; the count is [1, 1] or [1]; scores and classes are [1, K] and scores must
    be float. Among the assignments the shapes allow, an integer count and integer classes are preferred
    (some exporters emit float classes), then names.

    Args:
        outputs: ``(name, shape, dtype)`` of each model output in model order; dimensions may be dynamic.

    Returns:
        The index of each role in ``outputs``.

    Raises:
        ModelShapeError: Not four outputs, not exactly one boxes output, no assignment that fits, or one
            that is still ambiguous after dtypes and names.
    """
    described = ", ".join(f"{name!r} {format_shape(shape)} {np.dtype(dt).name}" for name, shape, dt in outputs)

    def fail(why: str) -> ModelShapeError:
        return ModelShapeError(f"outputs {described}: {why}; {_NMS_EXPECTED}")

    if len(outputs) != 4:
        raise fail(f"{len(outputs)} outputs")
    shapes = [tuple(shape) for _, shape, _ in outputs]
    kinds = [np.dtype(dt).kind for _, _, dt in outputs]
    boxes = [i for i, sh in enumerate(shapes) if len(sh) == 3 and sh[2] == 4]
    if len(boxes) != 1:
        raise fail("need exactly one [1, K, 4] boxes output")
    b = boxes[0]
    k = shapes[b][1]

    def count_like(i: int) -> bool:
        return len(shapes[i]) == 1 or (len(shapes[i]) == 2 and _dim_fits(shapes[i][1], 1))

    def per_det(i: int) -> bool:
        return len(shapes[i]) == 2 and _dim_fits(shapes[i][1], k)

    rest = [i for i in range(4) if i != b]
    cands = [
        (c, s, cl)
        for c, s, cl in itertools.permutations(rest)
        if count_like(c) and per_det(s) and per_det(cl) and kinds[s] == "f"
    ]
    if not cands:
        raise fail("no output assignment fits these shapes and dtypes")
    # Preferences narrow the set only when something survives them: a float count or float classes are
    # still accepted when that is all the model has.
    for prefer in (lambda a: kinds[a[0]] in "iu", lambda a: kinds[a[2]] in "iu"):
        narrowed = [a for a in cands if prefer(a)]
        cands = narrowed or cands
    if len(cands) > 1:

        def name_score(a: tuple[int, int, int]) -> int:
            roles = zip(("count", "scores", "classes"), a)
            return sum(any(w in outputs[i][0].lower() for w in _ROLE_WORDS[r]) for r, i in roles)

        best = max(name_score(a) for a in cands)
        cands = [a for a in cands if name_score(a) == best]
    if len(cands) > 1:
        raise fail("cannot tell count, scores and classes apart by shape, dtype or name")
    c, s, cl = cands[0]
    return NmsOutputRoles(count=c, boxes=b, scores=s, classes=cl)


def box_iou_one_to_many(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one ``(4,)`` xyxy box with each of ``(N, 4)`` xyxy boxes: ``(N,)`` in 0..1."""
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_thres: float) -> np.ndarray:
    """Greedy NMS, as Ultralytics' (torchvision ``nms`` semantics): suppresses IoU strictly above iou_thres.

    Args:
        boxes: ``(N, 4)`` xyxy; offset per class beforehand for class-aware NMS.
        scores: ``(N,)`` scores; ties keep their input order.
        iou_thres: IoU threshold, 0..1.

    Returns:
        ``(K,)`` int64 indices into ``boxes`` of the kept boxes, in descending score order.
    """
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
    """Decode one image of a dense (v8/v11) head: best class per anchor, class-aware NMS.

    Args:
        pred: ``(4 + C (+ extra), N)`` for one image: cx, cy, w, h in model-input pixels, then C class
            scores 0..1 (extra rows, such as mask coefficients, are ignored).
        num_classes: C.
        p: Thresholds and filters.

    Returns:
        Detections with xyxy in model-input pixels, best first.
    """
    scores_all = pred[4 : 4 + num_classes]
    best = scores_all.max(axis=0)
    cand = np.flatnonzero(best > p.conf)
    if cand.size == 0:
        return Detections.empty()
    cls = scores_all[:, cand].argmax(axis=0).astype(np.int32)
    conf = best[cand].astype(np.float32)
    return _nms_detections(pred[:4, cand].T, conf, cls, p)


def decode_yolov5(pred: np.ndarray, num_classes: int, p: DecodeParams) -> Detections:
    """Decode one image of a YOLOv5-style head, as YOLOv5's own ``non_max_suppression`` (utils/general.py).

    Rows with objectness > conf are candidates, their score is objectness * class score (best class), kept
    when > conf, then the dense head's NMS and max_det.

    Args:
        pred: ``(N, 5 + C (+ extra))``: cx, cy, w, h in model-input pixels, objectness, C class scores.
        num_classes: C.
        p: Thresholds and filters.

    Returns:
        Detections with xyxy in model-input pixels, best first.
    """
    obj = pred[:, 4]
    cand = np.flatnonzero(obj > p.conf)
    if cand.size == 0:
        return Detections.empty()
    scores = pred[cand, 5 : 5 + num_classes].astype(np.float32) * obj[cand, None].astype(np.float32)
    best = scores.max(axis=1)
    keep = best > p.conf
    if not keep.any():
        return Detections.empty()
    cls = scores[keep].argmax(axis=1).astype(np.int32)
    return _nms_detections(pred[cand[keep], :4], best[keep], cls, p)


def _nms_detections(xywh: np.ndarray, conf: np.ndarray, cls: np.ndarray, p: DecodeParams) -> Detections:
    """Candidates (boxes cx,cy,w,h, score, class) -> class filter, top MAX_NMS, class-aware NMS, max_det."""
    boxes = _xywh_to_xyxy(xywh.astype(np.float32))
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


def _select_rows(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, p: DecodeParams) -> Detections:
    """Filter rows the model already NMS'd: conf (strict >), class filter, then max_det in model order.

    Rows with NaN/inf, inverted boxes or class ids that are not a non-negative int32 are dropped: they
    can come from a broken engine or stale plugin memory and would otherwise reach the sinks as NaN JSON or
    fail a names lookup. NaN scores fall out of `>` on their own.
    """
    scores = scores.astype(np.float32, copy=False)
    boxes = boxes.astype(np.float32, copy=False)
    m = scores > p.conf
    m &= np.isfinite(boxes).all(axis=1) & (boxes[:, 2] >= boxes[:, 0]) & (boxes[:, 3] >= boxes[:, 1])
    m &= (classes >= 0) & (classes <= _INT32_MAX)  # NaN compares False
    # Float class ids (END2END, or any output TensorRT hands back as float32) are exact integers; rint
    # guards against a cast truncating 2.9999998 to 2
    cls = classes[m]
    cls = (np.rint(cls) if cls.dtype.kind == "f" else cls).astype(np.int32)
    idx = np.flatnonzero(m)
    if p.classes is not None:
        keep = np.isin(cls, np.asarray(p.classes))
        idx, cls = idx[keep], cls[keep]
    idx, cls = idx[: p.max_det], cls[: p.max_det]
    return Detections(boxes[idx], scores[idx], cls)  # fancy indexing copies: geometry maps boxes in place


def decode_end2end(pred: np.ndarray, p: DecodeParams) -> Detections:
    """Decode one image of an NMS-free / end-to-end head (rows already NMS'd by the model).

    Args:
        pred: ``(N, 6)``: x1, y1, x2, y2 in model-input pixels, score, class id (often float).
        p: Thresholds and filters (``iou`` and ``agnostic`` do not apply).

    Returns:
        Detections in the model's row order, xyxy in model-input pixels; non-finite, inverted or invalid-class
        rows dropped.
    """
    return _select_rows(pred[:, :4], pred[:, 4], pred[:, 5], p)


def decode_efficient_nms(
    count: np.ndarray, boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, p: DecodeParams
) -> Detections:
    """Decode one image of EfficientNMS_TRT output (sorted by score by the plugin).

    Only the first `count` rows are written; the rest is whatever the buffer held before, so it is never
    read. A count that is negative, NaN or beyond K is clamped.

    Args:
        count: ``[1, 1]`` or ``[1]`` number of valid rows (int or float).
        boxes: ``[1, K, 4]`` x1, y1, x2, y2 in model-input pixels.
        scores: ``[1, K]`` scores 0..1.
        classes: ``[1, K]`` class ids (int or float).
        p: Thresholds and filters (``iou`` and ``agnostic`` do not apply).

    Returns:
        Detections with xyxy in model-input pixels.
    """
    boxes = boxes.reshape(-1, 4)
    scores, classes = scores.reshape(-1), classes.reshape(-1)
    n = float(count.reshape(-1)[0]) if count.size else 0.0
    # min over all lengths so a count past K (or K that differs per tensor) cannot index past the end
    limit = min(len(boxes), len(scores), len(classes))
    n_valid = int(min(max(n, 0.0), limit)) if np.isfinite(n) else 0
    return _select_rows(boxes[:n_valid], scores[:n_valid], classes[:n_valid], p)


class YoloDecoder:
    """Decodes the raw outputs of one image and maps boxes to the source frame.

    Args:
        layout: The model's head layout (from ``ModelInfo``).
        num_classes: Number of classes C.
        params: Thresholds and filters; replaced as a whole when they change at run time.
        roles: For EFFICIENT_NMS, which output is which (``ModelInfo.output_roles``); guessed from the
            arrays on the first call when None.
    """

    def __init__(
        self,
        layout: OutputLayout,
        num_classes: int,
        params: DecodeParams,
        roles: NmsOutputRoles | None = None,
    ) -> None:
        self.layout = layout
        self.num_classes = num_classes
        self.params = params
        # EFFICIENT_NMS: give ModelInfo.output_roles. Without it the roles are guessed from the arrays on
        # the first call, which cannot use names: float classes (or a backend that hands outputs back as
        # float32) leave scores and classes looking alike, and the first frame raises.
        self.roles = roles

    def __call__(
        self, outputs: Sequence[np.ndarray], geometry: LetterboxGeometry, params: DecodeParams | None = None
    ) -> Detections:
        """Decode one image.

        Args:
            outputs: Every model output, in model order, each with batch dimension 1.
            geometry: The letterbox the frame was preprocessed with.
            params: Thresholds and filters for this image only (a detection request's own); None: ``self.params``.

        Returns:
            Detections in source-frame pixels (xyxy ``(N, 4)`` float32, clipped to the frame).

        Raises:
            TypeError: ``outputs`` is a single array instead of the list of outputs.
            ModelShapeError: EfficientNMS outputs whose roles cannot be resolved or do not fit.
        """
        if isinstance(outputs, np.ndarray):
            # The old interface took outputs[0]; indexing an array here would silently decode the wrong axis
            raise TypeError("YoloDecoder takes the list of all model outputs, not one array")
        p = self.params if params is None else params
        if self.layout is OutputLayout.DENSE:
            det = decode_dense(outputs[0][0], self.num_classes, p)
        elif self.layout is OutputLayout.YOLOV5:
            det = decode_yolov5(outputs[0][0], self.num_classes, p)
        elif self.layout is OutputLayout.END2END:
            det = decode_end2end(outputs[0][0], p)
        else:
            r = self._nms_roles(outputs)
            det = decode_efficient_nms(outputs[r.count], outputs[r.boxes], outputs[r.scores], outputs[r.classes], p)
        if len(det):
            geometry.boxes_to_source(det.xyxy)
        return det

    def _nms_roles(self, outputs: Sequence[np.ndarray]) -> NmsOutputRoles:
        if self.roles is None:
            try:
                self.roles = resolve_nms_roles([("", a.shape, a.dtype) for a in outputs])
            except ModelShapeError as exc:
                raise ModelShapeError(f"{exc} (pass ModelInfo.output_roles to YoloDecoder)") from None
        r = self.roles
        if max(r.count, r.boxes, r.scores, r.classes) >= len(outputs):
            shapes = ", ".join(format_shape(a.shape) for a in outputs)
            raise ModelShapeError(f"EfficientNMS roles {r} do not fit the {len(outputs)} outputs {shapes}")
        return r
