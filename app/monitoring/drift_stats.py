"""The arithmetic of prediction drift: tallies of predictions, the metrics drawn from them, the baseline statistics.

    per result -> Tally (frames, detections, per-label counts, confidence sum, confidence histogram)
    baseline: one Tally per sub-window -> per metric: level (pooled), std ACROSS sub-windows (floored)
    current: the sliding window's Tally -> per metric value -> z = (current - level) / std

Metrics (names as they appear in events, stats and Prometheus labels):
    detections_per_frame     detections / frames
    mean_confidence          confidence sum / detections
    confidence_distance      Hellinger distance of the confidence histogram to the baseline's (one-sided: only a
                             larger distance than the baseline's sub-windows show to one another is drift)
    class_share:<label>      detections of that label / detections
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

BINS = 20  # confidence histogram over 0..1

DETECTIONS_PER_FRAME = "detections_per_frame"
MEAN_CONFIDENCE = "mean_confidence"
CONFIDENCE_DISTANCE = "confidence_distance"
CLASS_SHARE = "class_share:"

# Std floors: a baseline that barely varied (a class never seen, a steady scene) must not turn noise into
# alerts. Absolute floors in the metric's unit, relative ones as a fraction of the baseline level.
STD_FLOOR = {DETECTIONS_PER_FRAME: 0.05, MEAN_CONFIDENCE: 0.02, CONFIDENCE_DISTANCE: 0.03, CLASS_SHARE: 0.03}
REL_STD_FLOOR = {DETECTIONS_PER_FRAME: 0.1, MEAN_CONFIDENCE: 0.0, CONFIDENCE_DISTANCE: 0.0, CLASS_SHARE: 0.1}
MIN_SUB_DETECTIONS = 5  # a sub-window with fewer detections says nothing about its confidence histogram


def metric_kind(name: str) -> str:
    """The floor key of a metric name (`class_share:car` -> `class_share:`)."""
    return CLASS_SHARE if name.startswith(CLASS_SHARE) else name


@dataclass(slots=True)
class Tally:
    """Predictions summed over a span of time (a second, a sub-window, the sliding window).

    Attributes:
        frames: Processed frames.
        detections: Detections in them.
        confidence_sum: Sum of their confidences.
        classes: Label -> detections.
        histogram: `(BINS,)` int64 detections per confidence bin over 0..1.
    """

    frames: int = 0
    detections: int = 0
    confidence_sum: float = 0.0
    classes: dict[str, int] = field(default_factory=dict)
    histogram: np.ndarray = field(default_factory=lambda: np.zeros(BINS, np.int64))

    def add_frame(self, labels: Sequence[str], confidences: np.ndarray) -> None:
        """Count one processed frame with its detections' labels and `(N,)` confidences in 0..1."""
        self.frames += 1
        n = len(labels)
        if not n:
            return
        self.detections += n
        self.confidence_sum += float(confidences.sum())
        for label in labels:
            self.classes[label] = self.classes.get(label, 0) + 1
        bins = np.clip((confidences * BINS).astype(np.int64), 0, BINS - 1)
        self.histogram += np.bincount(bins, minlength=BINS)

    def add(self, other: Tally, sign: int = 1) -> None:
        """Add (`sign` 1) or take away (`sign` -1) another tally; labels whose count reaches 0 disappear."""
        self.frames += sign * other.frames
        self.detections += sign * other.detections
        self.confidence_sum += sign * other.confidence_sum
        for label, count in other.classes.items():
            left = self.classes.get(label, 0) + sign * count
            if left > 0:
                self.classes[label] = left
            else:
                self.classes.pop(label, None)
        self.histogram += sign * other.histogram

    def as_json(self) -> dict:
        """`{frames, detections, confidence_sum, classes, confidence_histogram}` (the baseline file's sub-window)."""
        return {
            "frames": self.frames,
            "detections": self.detections,
            "confidence_sum": round(self.confidence_sum, 6),
            "classes": dict(sorted(self.classes.items())),
            "confidence_histogram": self.histogram.tolist(),
        }

    @classmethod
    def from_json(cls, doc: Mapping) -> Tally:
        """The inverse of `as_json` (values already validated by the caller)."""
        return cls(
            frames=int(doc["frames"]),
            detections=int(doc["detections"]),
            confidence_sum=float(doc["confidence_sum"]),
            classes={str(k): int(v) for k, v in doc["classes"].items()},
            histogram=np.asarray(doc["confidence_histogram"], np.int64),
        )

    def share(self, label: str) -> float | None:
        """Share of `label` among the detections; None without detections."""
        return self.classes.get(label, 0) / self.detections if self.detections else None

    def mean_confidence(self) -> float | None:
        """Mean confidence of the detections; None without detections."""
        return self.confidence_sum / self.detections if self.detections else None


def hellinger(a: np.ndarray, b: np.ndarray) -> float:
    """Hellinger distance (0 same .. 1 disjoint) between two histograms of counts or probabilities (`(BINS,)`)."""
    sa, sb = float(a.sum()), float(b.sum())
    if sa <= 0 or sb <= 0:
        return 0.0 if sa == sb else 1.0
    bc = float(np.sqrt((a / sa) * (b / sb)).sum())
    return math.sqrt(max(0.0, 1.0 - bc))


@dataclass(frozen=True, slots=True)
class MetricBaseline:
    """One metric's baseline: its level, its spread across sub-windows, and the floored std z divides by."""

    level: float
    spread: float  # sample std of the sub-window values
    std: float  # max(spread, floors)
    one_sided: bool = False  # only an increase is drift (the histogram distance)


def _floored(name: str, level: float, spread: float) -> float:
    kind = metric_kind(name)
    return max(spread, STD_FLOOR[kind], REL_STD_FLOOR[kind] * abs(level))


def _spread(values: Sequence[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) >= 2 else 0.0


class Baseline:
    """The baseline distribution of one camera, from its sub-windows.

    Args:
        windows: The sub-windows' tallies, in order (empty ones, e.g. while the camera was down, are ignored).
        sub_window_s: Length of one sub-window, s.
        min_class_share: A label of the baseline is watched when its pooled share reaches this.

    Raises:
        ValueError: Fewer than 2 sub-windows with frames (no variation can be estimated).
    """

    def __init__(self, windows: Iterable[Tally], sub_window_s: float, min_class_share: float) -> None:
        self.windows = [w for w in windows if w.frames > 0]
        if len(self.windows) < 2:
            raise ValueError(f"{len(self.windows)} sub-window(s) with frames; at least 2 are needed")
        self.sub_window_s = sub_window_s
        self.total = Tally()
        for w in self.windows:
            self.total.add(w)
        self.labels = tuple(
            sorted(label for label in self.total.classes if (self.total.share(label) or 0) >= min_class_share)
        )
        busy = [w.detections for w in self.windows]
        self.sub_detections = float(np.median(busy))  # a window's histogram is compared once it has this many
        self._cache: dict[str, MetricBaseline | None] = {}

    def metric(self, name: str) -> MetricBaseline | None:
        """The baseline of metric `name`; None when the baseline cannot say (e.g. no detections at all)."""
        if name not in self._cache:
            self._cache[name] = self._compute(name)
        return self._cache[name]

    def _compute(self, name: str) -> MetricBaseline | None:
        values: list[float]
        if name == DETECTIONS_PER_FRAME:
            values = [w.detections / w.frames for w in self.windows]
            level = self.total.detections / self.total.frames
        elif name == CONFIDENCE_DISTANCE:
            # Each sub-window against the others (leave one out): against a total that includes it, its
            # distance would be biased low, while the window compared later is independent of the baseline.
            hist = self.total.histogram
            values = [
                hellinger(w.histogram, hist - w.histogram)
                for w in self.windows
                if w.detections >= MIN_SUB_DETECTIONS and self.total.detections - w.detections >= MIN_SUB_DETECTIONS
            ]
            if len(values) < 2:
                return None
            level = float(np.mean(values))
            return MetricBaseline(level, _spread(values), _floored(name, level, _spread(values)), one_sided=True)
        elif name == MEAN_CONFIDENCE:
            values = [v for w in self.windows if (v := w.mean_confidence()) is not None]
            level_or_none = self.total.mean_confidence()
            if level_or_none is None or len(values) < 2:
                return None
            level = level_or_none
        elif name.startswith(CLASS_SHARE):
            label = name[len(CLASS_SHARE) :]
            values = [v for w in self.windows if (v := w.share(label)) is not None]
            level_or_none = self.total.share(label)
            if level_or_none is None or len(values) < 2:
                return None
            level = level_or_none
        else:
            raise KeyError(name)
        spread = _spread(values)
        return MetricBaseline(level, spread, _floored(name, level, spread))


def current_values(
    window: Tally, baseline: Baseline, min_detections: int, min_class_share: float, also: Iterable[str] = ()
) -> dict[str, float | None]:
    """The metrics of the sliding window, by name; None where the window has too few detections to tell.

    Args:
        window: The sliding window's tally (the caller checked it has enough frames).
        baseline: What it is compared with: its labels and histogram.
        min_detections: Detections the window needs for the confidence and class metrics.
        min_class_share: A label only seen now is watched when its share reaches this.
        also: Metric names to include anyway (those in alert, so they can recover).
    """
    out: dict[str, float | None] = {DETECTIONS_PER_FRAME: window.detections / window.frames}
    enough = window.detections >= min_detections
    out[MEAN_CONFIDENCE] = window.mean_confidence() if enough else None
    # The histogram distance shrinks as samples grow: compare only a window at least as busy as a sub-window was.
    busy = enough and window.detections >= baseline.sub_detections
    out[CONFIDENCE_DISTANCE] = hellinger(window.histogram, baseline.total.histogram) if busy else None
    labels = set(baseline.labels)
    if enough:
        labels.update(label for label in window.classes if (window.share(label) or 0) >= min_class_share)
    labels.update(n[len(CLASS_SHARE) :] for n in also if n.startswith(CLASS_SHARE))
    for label in sorted(labels):
        out[CLASS_SHARE + label] = window.share(label) if enough else None
    return out


def z_score(value: float, base: MetricBaseline) -> float:
    """(value - level) / std, clipped at 0 from below for a one-sided metric."""
    z = (value - base.level) / base.std
    return max(0.0, z) if base.one_sided else z
