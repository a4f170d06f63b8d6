"""Detection agreement between two runs of a model (engine vs ONNX Runtime, INT8 vs FP32).

F1 at an IoU threshold with the reference's boxes as ground truth, plus the mean confidence shift of
matched boxes. This is the gate an engine must pass before it is used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from app.inference.decode import box_iou_one_to_many
from app.types import Detections


@dataclass(frozen=True)
class Agreement:
    """Match counts and rates of a candidate run against a reference run; rates in 0..1."""

    f1: float
    precision: float
    recall: float
    matched: int
    reference_boxes: int
    candidate_boxes: int
    mean_confidence_shift: float  # |candidate - reference| over matched boxes

    def as_dict(self) -> dict:
        """The fields as a JSON-ready dict, floats rounded to 4 decimals (for manifests and reports)."""
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in self.__dict__.items()}


def agreement(reference: list[Detections], candidate: list[Detections], iou: float = 0.5) -> Agreement:
    """Match candidate boxes to reference boxes per frame and score the agreement.

    Greedy class-aware matching per frame, highest candidate confidence first (as mAP matching); each
    reference box matches at most once.

    Args:
        reference: Detections of the reference run, one per frame (treated as ground truth).
        candidate: Detections of the run under test on the same frames, same order.
        iou: Least IoU for a match, 0..1.

    Returns:
        F1, precision, recall (1.0 when there is nothing to get wrong), counts and mean confidence shift.

    Raises:
        ValueError: The two lists differ in length.
    """
    tp = n_ref = n_cand = 0
    shifts: list[float] = []
    for ref, cand in zip(reference, candidate, strict=True):
        n_ref += len(ref)
        n_cand += len(cand)
        used = np.zeros(len(ref), bool)
        for j in np.argsort(-cand.confidence):
            same = (ref.class_id == cand.class_id[j]) & ~used
            if not same.any():
                continue
            ious = np.where(same, box_iou_one_to_many(cand.xyxy[j], ref.xyxy) if len(ref) else 0.0, -1.0)
            best = int(np.argmax(ious))
            if ious[best] >= iou:
                used[best] = True
                tp += 1
                shifts.append(abs(float(cand.confidence[j]) - float(ref.confidence[best])))
    precision = tp / n_cand if n_cand else 1.0
    recall = tp / n_ref if n_ref else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return Agreement(f1, precision, recall, tp, n_ref, n_cand, float(np.mean(shifts)) if shifts else 0.0)


def map50(reference: list[Detections], candidate: list[Detections], iou: float = 0.5) -> float:
    """MAP at IoU 0.5 of `candidate` against `reference` as pseudo-labels.

    All-point interpolated AP (Pascal VOC 2010+ style, not COCO's 101-point sampling), averaged over the
    classes the reference contains.

    Args:
        reference: Detections taken as ground truth, one per frame.
        candidate: Detections under test on the same frames, same order.
        iou: Least IoU for a true positive, 0..1.

    Returns:
        mAP in 0..1; 1.0 when the reference has no boxes.

    Raises:
        ValueError: The two lists differ in length.
    """
    classes = sorted({int(c) for r in reference for c in r.class_id})
    aps = []
    for cls in classes:
        scores, hits, n_gt = [], [], 0
        for ref, cand in zip(reference, candidate, strict=True):
            gt = ref.xyxy[ref.class_id == cls]
            n_gt += len(gt)
            used = np.zeros(len(gt), bool)
            sel = np.where(cand.class_id == cls)[0]
            for j in sel[np.argsort(-cand.confidence[sel])]:
                scores.append(float(cand.confidence[j]))
                if len(gt):
                    ious = np.where(used, -1.0, box_iou_one_to_many(cand.xyxy[j], gt))
                    k = int(np.argmax(ious))
                    if ious[k] >= iou:
                        used[k] = True
                        hits.append(1)
                        continue
                hits.append(0)
        if n_gt == 0:
            continue
        order = np.argsort(-np.asarray(scores)) if scores else np.array([], int)
        tp = np.cumsum(np.asarray(hits)[order]) if len(order) else np.array([0])
        fp = np.cumsum(1 - np.asarray(hits)[order]) if len(order) else np.array([0])
        recall = tp / n_gt
        precision = tp / np.maximum(tp + fp, 1)
        mrec = np.concatenate([[0.0], recall, [1.0]])
        mpre = np.concatenate([[1.0], precision, [0.0]])
        mpre = np.maximum.accumulate(mpre[::-1])[::-1]
        idx = np.where(mrec[1:] != mrec[:-1])[0]
        aps.append(float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1])))
    return float(np.mean(aps)) if aps else 1.0
