"""Detector = backend + preprocessing + decode.

Stages are separate methods so callers can overlap them (`vigil detect` prepares frame n+1 while frame n
is in the backend).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import replace

import numpy as np

from app.backends import Backend, load_backend
from app.backends.base import DYNAMIC_BATCH, StagedFrame
from app.config import ModelConfig
from app.inference.decode import DecodeParams, YoloDecoder
from app.inference.model_info import ModelInfo, ModelShapeError
from app.inference.protocol import BackendState
from app.letterbox import LetterboxGeometry, Preprocessor, check_frame
from app.types import Detections, StageTimings

log = logging.getLogger(__name__)


def match_classes(wanted: Iterable[int | str], names: Mapping[int, str]) -> tuple[tuple[int, ...], list[str]]:
    """Labels (case-insensitive) and ids (ints or digit strings), in any mix, as class ids of a model.

    The one reading of a class list, for `model.classes` and a detection request's `classes`.

    Args:
        wanted: Labels and/or ids.
        names: The model's ``{class id: label}``; when empty, any id is accepted.

    Returns:
        ``(ids, unknown)``: the matching ids in first-occurrence order without duplicates, and the ``repr`` of
        every entry that is not a class of the model.
    """
    by_label = {label.lower(): cid for cid, label in names.items()}
    ids: list[int] = []
    unknown: list[str] = []
    for item in wanted:
        if isinstance(item, str) and item.lower() in by_label:
            ids.append(by_label[item.lower()])
        # isdecimal, not isdigit: '²' is a digit that int() refuses
        elif (isinstance(item, int) or item.strip().isdecimal()) and (not names or int(item) in names):
            ids.append(int(item))
        else:
            unknown.append(repr(item))
    return tuple(dict.fromkeys(ids)), unknown


def resolve_classes(wanted: list[int | str] | None, names: dict[int, str]) -> tuple[int, ...] | None:
    """`model.classes` as class ids of this model: label names (case-insensitive) or ids, in any mix.

    Entries the model does not have are logged once as a warning (the default config lists COCO labels,
    and a model of one's own may have only some of them). When none of the entries is a class of the
    model, nothing could ever be detected: that raises ModelShapeError naming the model's labels.

    Args:
        wanted: Labels and/or ids (ids may be digit strings); None means every class.
        names: The model's ``{class id: label}``; when empty, any id is accepted.

    Returns:
        The matching class ids, first occurrence order, duplicates dropped; None when ``wanted`` is None.

    Raises:
        ModelShapeError: No entry of ``wanted`` is a class of the model.
    """
    if wanted is None:
        return None
    ids, unknown = match_classes(wanted, names)
    labels = ", ".join(f"{cid}: {label}" for cid, label in sorted(names.items())[:100])
    if unknown and not ids:
        raise ModelShapeError(f"model.classes: none of {', '.join(unknown)} is a class of the model ({labels})")
    if unknown:
        log.warning("model.classes: %s not among the model's classes (%s); ignored", ", ".join(unknown), labels)
    return ids


def _ms_since(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0


class Detector:
    """One model ready to run: letterbox preprocessing, a backend, and the YOLO decoder of its head.

    Stage times are wall-clock milliseconds (``time.perf_counter``).

    Args:
        backend: A loaded backend; the detector owns and closes it.
        info: What the model's inputs and outputs are (from ``ModelInfo.from_backend``).
        params: Initial decode thresholds and filters.
        reason: Why this backend was chosen, for stats.
    """

    def __init__(self, backend: Backend, info: ModelInfo, params: DecodeParams, reason: str = "") -> None:
        self.backend = backend
        self.info = info
        self.backend_reason = reason
        self.preprocess = Preprocessor(info.input_hw, info.input_dtype)
        self.decoder = YoloDecoder(info.layout, info.num_classes, params, info.output_roles)

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> Detector:
        """Load the configured model on the configured (or automatically chosen) backend.

        Args:
            cfg: The ``model`` config section.

        Returns:
            The detector; the backend is closed again if anything after loading it fails.

        Raises:
            BackendError: No backend can run the model (missing file or engine, runtime unavailable).
            ModelShapeError: The model is not a decodable YOLO detector, or ``cfg.classes`` names none of
                its classes.
        """
        backend, reason = load_backend(cfg)
        try:
            info = ModelInfo.from_backend(backend, cfg.imgsz, cfg.layout)
        except BaseException:
            backend.close()
            raise
        try:
            classes = resolve_classes(cfg.classes, info.names)
        except BaseException:
            backend.close()
            raise
        params = DecodeParams(conf=cfg.conf, iou=cfg.iou, max_det=cfg.max_det, classes=classes)
        log.info(
            "model %s: input %s %s, %s head (%s), %d classes, backend %s (%s)",
            cfg.path,
            info.input_hw,
            info.input_dtype,
            info.layout.value,
            info.layout_reason,
            info.num_classes,
            backend.name,
            reason,
        )
        return cls(backend, info, params, reason)

    @property
    def names(self) -> dict[int, str]:
        """The model's ``{class id: label}``."""
        return self.info.names

    @property
    def params(self) -> DecodeParams:
        """The decode thresholds and filters now in force."""
        return self.decoder.params

    def backend_state(self) -> BackendState:
        """What serves now and why.

        After a run-time failover the failover's own account replaces the reason the backend was chosen at load.
        """
        from app.backends.failover import FailoverBackend

        b = self.backend
        reason, failovers = self.backend_reason, 0
        if isinstance(b, FailoverBackend) and b.failovers:
            reason, failovers = b.reason, b.failovers
        return BackendState(b.name, tuple(b.providers), reason, failovers)

    def set_thresholds(self, conf: float | None = None, iou: float | None = None) -> None:
        """Change the confidence and/or NMS IoU threshold (0..1) from the next decode on; None keeps one."""
        p = self.decoder.params
        self.decoder.params = replace(p, conf=p.conf if conf is None else conf, iou=p.iou if iou is None else iou)

    def prepare(self, image: np.ndarray) -> tuple[np.ndarray | StagedFrame, LetterboxGeometry, float]:
        """Build the model input for one frame.

        Args:
            image: ``(H, W, 3)`` uint8 BGR frame of any size.

        Returns:
            ``(input, geometry, ms)``: the input is the letterboxed ``(1, 3, h, w)`` RGB 0..1 tensor in the
            model's input dtype (usually float32), or, when the backend letterboxes on its device, the frame
            staged for upload (one host copy; the rest happens in ``infer``). ``geometry`` maps boxes back to
            ``image``; ``ms`` is the time taken.

        Raises:
            ValueError: ``image`` is not ``(H, W, 3)`` uint8.
        """
        t0 = time.perf_counter()
        if self.backend.preprocesses_on_device:
            check_frame(image)
            geometry = self.preprocess.geometry_for((image.shape[0], image.shape[1]))
            return self.backend.stage(image, geometry), geometry, _ms_since(t0)
        tensor, geometry = self.preprocess(image)
        return tensor, geometry, _ms_since(t0)

    def infer(self, tensor: np.ndarray | StagedFrame) -> tuple[list[np.ndarray], float]:
        """Run the backend on what ``prepare`` returned.

        Args:
            tensor: The prepared input (tensor or staged frame).

        Returns:
            ``(outputs, ms)``: the raw model outputs in model order (batch dimension 1), and the time taken.

        Raises:
            BackendError: The backend failed to run (a failover backend first tries its fallback).
        """
        t0 = time.perf_counter()
        outputs = self.backend.infer_frame(tensor) if isinstance(tensor, StagedFrame) else self.backend.infer(tensor)
        return outputs, _ms_since(t0)

    @property
    def batch_capacity(self) -> int:
        """Inputs one ``infer_batch`` call takes at most.

        1 for a fixed batch of 1 or a backend that letterboxes on its device (staged frames go one at a time), the
        backend's ``batch_capacity`` otherwise.
        """
        if self.backend.preprocesses_on_device:
            return 1
        return max(1, self.backend.batch_capacity)

    def infer_batch(self, tensors: list[np.ndarray]) -> tuple[list[list[np.ndarray]], float]:
        """Run several prepared ``(1, 3, h, w)`` tensors as one backend call.

        Args:
            tensors: What ``prepare`` returned (tensors, not staged frames), at most ``batch_capacity`` of them.

        Returns:
            ``(per_input, ms)``: for each input, the model outputs sliced to its batch item (batch dimension kept
            1, as ``decode`` expects), and the time the call took.

        Raises:
            BackendError: The backend failed to run. ValueError: more inputs than ``batch_capacity``.
        """
        if len(tensors) > self.batch_capacity:
            raise ValueError(f"{len(tensors)} inputs in one call; the model takes {self.batch_capacity} at most")
        if len(tensors) == 1:
            outputs, ms = self.infer(tensors[0])
            return [outputs], ms
        t0 = time.perf_counter()
        outputs = self.backend.infer(np.concatenate(tensors, axis=0))
        ms = _ms_since(t0)
        return [[o[i : i + 1] for o in outputs] for i in range(len(tensors))], ms

    def decode(
        self, outputs: list[np.ndarray], geometry: LetterboxGeometry, params: DecodeParams | None = None
    ) -> tuple[Detections, float]:
        """Turn raw outputs into detections in source-frame pixels.

        Args:
            outputs: What ``infer`` returned.
            geometry: What ``prepare`` returned for the same frame.
            params: Thresholds and filters for this frame only; None: those in force (``self.params``).

        Returns:
            ``(detections, ms)``: xyxy ``(N, 4)`` float32 pixels of the original frame (clipped), confidence
            ``(N,)`` float32, class_id ``(N,)`` int32, best first; and the time taken.

        Raises:
            ModelShapeError: The outputs do not fit the model's head layout (EfficientNMS roles).
        """
        t0 = time.perf_counter()
        det = self.decoder(outputs, geometry, params)
        return det, _ms_since(t0)

    def detect(self, image: np.ndarray) -> tuple[Detections, StageTimings]:
        """Run ``prepare``, ``infer`` and ``decode`` on one frame.

        Args:
            image: ``(H, W, 3)`` uint8 BGR frame.

        Returns:
            Detections in ``image``'s pixels and the three stage times in ms.

        Raises:
            ValueError: ``image`` is not ``(H, W, 3)`` uint8.
            BackendError: The backend failed.
        """
        tensor, geometry, pre = self.prepare(image)
        outputs, inf = self.infer(tensor)
        det, post = self.decode(outputs, geometry)
        return det, StageTimings(pre, inf, post)

    def warmup(self, runs: int) -> float:
        """Run the whole pipeline ``runs`` times on a grey frame so the first real frame does not pay for lazy init.

        A GPU backend with a bounded batch (a TensorRT engine's profile) also runs one full batch.

        Returns:
            Total time taken, in ms.
        """
        t0 = time.perf_counter()
        h, w = self.info.input_hw
        blank = np.full((h, w, 3), 114, np.uint8)
        for _ in range(runs):
            self.detect(blank)
        b = self.backend
        if runs and not b.runs_on_cpu and 1 < self.batch_capacity < DYNAMIC_BATCH:
            # a GPU engine batches (app/inference/batch.py): its first full batch pays for shape binding here
            tensor = self.preprocess(blank)[0]
            self.infer_batch([tensor] * self.batch_capacity)
        return _ms_since(t0)

    def close(self) -> None:
        """Release the backend (sessions, engines, device memory)."""
        self.backend.close()
