"""What we need to know about a detector model, read from its I/O and metadata, validated up front.

Validating at load means a wrong model fails with its shape named, not with an IndexError mid-stream.
"""

from __future__ import annotations

import ast
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeGuard, cast

import numpy as np

from app.backends.base import Backend, TensorSpec

# ModelShapeError lives in decode.py (the decoder raises it too); callers keep importing it from here
from app.inference.decode import (
    MAX_WH,
    ModelShapeError,
    NmsOutputRoles,
    OutputLayout,
    format_shape,
    resolve_nms_roles,
)
from app.letterbox import Preprocessor

__all__ = ["LAYOUT_CHOICES", "MAX_IMGSZ", "ModelInfo", "ModelShapeError", "round_to_stride"]

log = logging.getLogger(__name__)


DEFAULT_STRIDE = 32
# Largest input side: class-aware NMS offsets boxes by class * MAX_WH, so a side beyond it would let boxes
# of neighbouring classes overlap
MAX_IMGSZ = MAX_WH
LAYOUT_CHOICES = ("auto", "dense", "end2end", "yolov5")  # model.layout
_HOW_TO_CHOOSE = "set model.layout to 'yolov5' or 'end2end'"


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """A detector model's input, head layout and classes, as the preprocessor and decoder need them.

    Attributes:
        input_name: Name of the image input.
        input_hw: ``(height, width)`` in pixels the model runs at (fixed by the model, or chosen for a
            dynamic input).
        input_dtype: Input tensor dtype (float32, or float16 for half-precision models).
        layout: How the outputs encode detections.
        num_classes: What the model's head says; for heads that only carry class ids (END2END,
            EFFICIENT_NMS) it is len(names) from the metadata, or 0 when there are none (TensorRT engines
            from third-party exporters usually have none): 0 means unknown, and ids then show as their
            number (Detections.to_list falls back to str(id)).
        names: ``{class id: label}`` from the metadata, else ``class0``... for the head's classes.
        stride: Largest feature-map stride (input sides of dynamic models are multiples of it).
        task: Ultralytics task from the metadata; always ``detect`` here.
        output_roles: EFFICIENT_NMS only: which output index holds what.
        layout_reason: How the layout was recognised (for the load log).
    """

    input_name: str
    input_hw: tuple[int, int]
    input_dtype: np.dtype
    layout: OutputLayout
    num_classes: int
    names: dict[int, str]
    stride: int
    task: str
    output_roles: NmsOutputRoles | None = None  # EFFICIENT_NMS only: which output index holds what
    layout_reason: str = ""

    @classmethod
    def from_backend(cls, backend: Backend, imgsz: int | None = None, layout: str = "auto") -> ModelInfo:
        """Read and validate a loaded model's inputs, outputs and metadata.

        Args:
            backend: The loaded model; it may be run once on a grey frame (see ``layout``).
            imgsz: Input side in pixels for dynamic inputs (rounded up to the model's stride; ignored with
                a warning for fixed inputs); None uses the metadata's imgsz, else 640.
            layout: ``model.layout``: ``auto`` recognises the head from metadata, output shape and, where
                those leave a [1, N, 6] output open, the values of one inference on a grey frame; ``dense``,
                ``end2end`` or ``yolov5`` force one.

        Returns:
            The model's description.

        Raises:
            ModelShapeError: An unknown ``layout``; an input that is not ``[1, 3, H, W]``; an unusable
                ``imgsz``; a task other than ``detect``; no outputs; outputs that fit no YOLO head (or not the
                forced layout); a [1, N, 6] output whose evidence is missing or disagrees; class columns
                fewer than the metadata's names. The message names the offending shape.
        """
        if layout not in LAYOUT_CHOICES:
            raise ModelShapeError(f"model.layout {layout!r} is not one of {', '.join(LAYOUT_CHOICES)}")
        meta = backend.metadata
        inp = backend.inputs[0]
        if len(inp.shape) != 4 or inp.shape[1] not in (3, "3"):
            raise ModelShapeError(f"input {inp.name!r} has shape {format_shape(inp.shape)}; expected [1, 3, H, W]")
        stride = _stride(meta)
        input_hw = _input_hw(inp, meta, imgsz, stride)
        task = meta.get("task", "detect")
        if task != "detect":
            raise ModelShapeError(f"model task is {task!r}; only 'detect' models are supported")
        names = _parse_names(meta.get("names"))
        if len(backend.outputs) < 1:
            raise ModelShapeError("model has no outputs")
        roles = None
        if _looks_like_efficient_nms(backend.outputs):
            if layout != "auto":
                shapes = ", ".join(format_shape(o.shape) for o in backend.outputs)
                raise ModelShapeError(
                    f"model.layout {layout!r} does not fit a model with four outputs {shapes} (an EfficientNMS "
                    "export); leave model.layout at auto"
                )
            roles = resolve_nms_roles([(o.name, o.shape, o.dtype) for o in backend.outputs])
            kind, nc, why = OutputLayout.EFFICIENT_NMS, len(names), "four EfficientNMS outputs"
        else:

            def probe() -> np.ndarray:
                blank = np.full((input_hw[0], input_hw[1], 3), 114, np.uint8)
                return np.asarray(backend.infer(Preprocessor(input_hw, inp.dtype)(blank)[0])[0])

            kind, nc, why = _layout(backend.outputs[0], names, meta, input_hw, stride, layout, probe)
        if not names:
            names = {i: f"class{i}" for i in range(nc)}
        return cls(inp.name, input_hw, inp.dtype, kind, nc, names, stride, task, roles, why)


def round_to_stride(size: int, stride: int) -> int:
    """The input side a dynamic model runs at for `size`: rounded up to a multiple of `stride`.

    As Ultralytics' check_imgsz does (650 -> 672 at stride 32); never below one stride.
    """
    return max(math.ceil(size / stride), 1) * stride


def _looks_like_efficient_nms(outputs: list[TensorSpec]) -> bool:
    """Four outputs with a [.., K, 4] boxes tensor or an integer [.., 1] count.

    Such a model is claimed here, so that a malformed NMS export fails naming all four shapes instead of
    being judged by its first output alone.
    """
    if len(outputs) != 4:
        return False
    for o in outputs:
        if len(o.shape) == 3 and o.shape[2] == 4:
            return True
        if np.dtype(o.dtype).kind in "iu" and 1 <= len(o.shape) <= 2 and o.shape[-1] == 1:
            return True
    return False


def _static(dim: object) -> TypeGuard[int]:
    return isinstance(dim, int) and dim > 0


def _stride(meta: dict[str, str]) -> int:
    raw = meta.get("stride")
    if raw is None:
        return DEFAULT_STRIDE
    try:
        value = ast.literal_eval(raw.strip())
        stride = int(max(value) if isinstance(value, list | tuple) else value)  # some write all strides
    except (ValueError, SyntaxError, TypeError):
        stride = 0
    if not 1 <= stride <= 256:
        log.warning("model metadata stride %.40r is not usable; assuming %d", raw, DEFAULT_STRIDE)
        return DEFAULT_STRIDE
    return stride


def _check_size(size: object, what: str) -> int:
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or not 0 < size <= MAX_IMGSZ:
        raise ModelShapeError(f"{what} {size!r} is not a usable input size; give a positive size up to {MAX_IMGSZ}")
    return int(size)


def _meta_imgsz(meta: dict[str, str]) -> tuple[int, int] | None:
    raw = meta.get("imgsz")
    if raw is None:
        return None
    try:
        sz = ast.literal_eval(raw)
        hw = (sz[0], sz[1]) if isinstance(sz, list | tuple) else (sz, sz)
        return _check_size(hw[0], "imgsz"), _check_size(hw[1], "imgsz")
    except (ValueError, SyntaxError, TypeError, IndexError, ModelShapeError):
        log.warning("model metadata imgsz %.40r is not a usable size; ignoring it", raw)
        return None


def _input_hw(inp: TensorSpec, meta: dict[str, str], imgsz: int | None, stride: int) -> tuple[int, int]:
    h, w = inp.shape[2], inp.shape[3]
    if imgsz is not None:
        imgsz = _check_size(imgsz, "imgsz")
    if _static(h) and _static(w):
        if imgsz is not None and (imgsz, imgsz) != (h, w):
            log.warning("model input is fixed at %dx%d; ignoring imgsz=%d", h, w, imgsz)
        return h, w
    # A dynamic input: the size asked for (or the one the model was exported at), on the stride grid. A size
    # off the grid makes the feature maps of the upsampling path disagree by one cell, and ONNX Runtime
    # fails in a Concat on the first frame.
    if imgsz is not None:
        want, what = (imgsz, imgsz), "imgsz"
    else:
        want, what = _meta_imgsz(meta) or (640, 640), "the model's metadata imgsz"
    hw = tuple(d if _static(d) else round_to_stride(s, stride) for d, s in zip((h, w), want, strict=True))
    if any(not _static(d) and s != r for d, s, r in zip((h, w), want, hw, strict=True)):
        asked = want[0] if want[0] == want[1] else list(want)
        used = hw[0] if hw[0] == hw[1] else list(hw)
        log.warning("%s %s is not a multiple of the model's stride %d; using %s", what, asked, stride, used)
    for side in hw:
        _check_size(side, "imgsz rounded to the stride,")
    return hw[0], hw[1]


def _parse_names(raw: str | None) -> dict[int, str]:
    if not raw:
        return {}
    try:
        names = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        log.warning("model metadata 'names' is not a literal: %.80s", raw)
        return {}
    if isinstance(names, list):
        return dict(enumerate(str(n) for n in names))
    if isinstance(names, dict):
        return {int(k): str(v) for k, v in names.items()}
    return {}


def _end2end_declared(meta: dict[str, str]) -> bool:
    """Whether the metadata declares an end-to-end/NMS export.

    Ultralytics writes end2end (8.4+) and args.nms (8.3+) into its exports; YOLOv5's export.py writes
    only stride and names.
    """
    return meta.get("end2end") == "True" or "'nms': True" in meta.get("args", "")


def _layout(
    out: TensorSpec,
    names: dict[int, str],
    meta: dict[str, str],
    input_hw: tuple[int, int],
    stride: int,
    forced: str = "auto",
    probe: Callable[[], np.ndarray] | None = None,
) -> tuple[OutputLayout, int, str]:
    """(layout, classes, how it was recognised) for a single-output head.

    [1, C, N] with C < N is the dense v8/v11 head; [1, N, C] with N > C has one row per detection or
    anchor: C > 6 is YOLOv5 (cx, cy, w, h, objectness, C - 5 class scores); C == 6 is either an
    end-to-end head (x1, y1, x2, y2, score, class) or a one-class YOLOv5 head, see _end2end_or_yolov5.
    """
    shape = out.shape
    bad = ModelShapeError(
        f"output {out.name!r} has shape {format_shape(shape)}; expected a YOLO detector output "
        "[1, 4+classes, anchors] (v8/v11), [1, anchors, 5+classes] (YOLOv5) or [1, detections, 6] "
        "(end-to-end/NMS export)"
    )
    if len(shape) != 3:
        raise bad
    _, a, b = shape
    if forced != "auto":
        return _forced_layout(out, forced, names)
    if b == 6 and _end2end_declared(meta):
        return OutputLayout.END2END, len(names), "metadata declares an end-to-end/NMS export"
    if _static(a) and (not _static(b) or b >= a):
        return (*_dense(out, names, bad), "output shape [1, 4+classes, anchors]")
    if not _static(b) or b < 6:
        raise bad
    if b > 6:
        return (*_yolov5(out, names), "output shape [1, anchors, 5+classes]")
    return _end2end_or_yolov5(out, names, input_hw, stride, probe)


def _forced_layout(out: TensorSpec, forced: str, names: dict[int, str]) -> tuple[OutputLayout, int, str]:
    _, a, b = out.shape
    why = "model.layout"
    want = {"dense": "[1, 4+classes, anchors]", "end2end": "[1, N, 6]", "yolov5": "[1, anchors, 5+classes]"}
    misfit = ModelShapeError(
        f"model.layout {forced!r} needs an output {want[forced]}, but output {out.name!r} has shape "
        f"{format_shape(out.shape)}; set model.layout to auto"
    )
    if forced == "dense" and _static(a) and (not _static(b) or b >= a):
        return (*_dense(out, names, misfit), why)
    if forced == "end2end" and b == 6:
        return OutputLayout.END2END, len(names), why
    if forced == "yolov5" and _static(b) and b >= 6:
        return (*_yolov5(out, names), why)
    raise misfit


def _dense(out: TensorSpec, names: dict[int, str], bad: ModelShapeError) -> tuple[OutputLayout, int]:
    nc = cast(int, out.shape[1]) - 4  # callers checked the dimension is static
    if nc < 1:
        raise bad
    if names and nc < len(names):
        raise ModelShapeError(
            f"output {out.name!r} has shape {format_shape(out.shape)}: {nc} class channels, "
            f"but the metadata names {len(names)} classes"
        )
    if names:
        nc = len(names)  # channels beyond the classes are extras (masks, keypoints)
    return OutputLayout.DENSE, nc


def _yolov5(out: TensorSpec, names: dict[int, str]) -> tuple[OutputLayout, int]:
    nc = cast(int, out.shape[2]) - 5  # callers checked the dimension is static
    if names and nc < len(names):
        hint = (
            " (it looks like a transposed YOLOv8 output [1, anchors, 4+classes], which Vigil does not read: "
            "export the model with Ultralytics, whose output is [1, 4+classes, anchors])"
            if nc + 1 == len(names)
            else ""
        )
        raise ModelShapeError(
            f"output {out.name!r} has shape {format_shape(out.shape)}: read as YOLOv5 [1, anchors, 5+classes] "
            f"it has {nc} class column(s), but the metadata names {len(names)} classes{hint}"
        )
    return OutputLayout.YOLOV5, len(names) if names else nc


def anchor_counts(input_hw: tuple[int, int], stride: int) -> set[int]:
    """Row counts an anchor-grid head can have at this input.

    One cell per stride-s pixels at every level from the smallest stride (8, or 4 for P2 models) up to the
    model's stride, times 1 (anchor-free) or 3 (YOLOv5's anchors per cell). 640x640 at stride 32: 8400 or
    25200.

    Args:
        input_hw: ``(height, width)`` of the model input in pixels.
        stride: The model's largest stride.

    Returns:
        Every plausible row count (for lowest strides 8 and 4, times 1 and 3).
    """
    h, w = input_hw
    counts = set()
    for lowest in (8, 4):
        levels = [s for s in (4, 8, 16, 32, 64, 128) if lowest <= s <= max(stride, lowest)]
        cells = sum(math.ceil(h / s) * math.ceil(w / s) for s in levels)
        counts |= {cells, 3 * cells}
    return counts


def _end2end_or_yolov5(
    out: TensorSpec,
    names: dict[int, str],
    input_hw: tuple[int, int],
    stride: int,
    probe: Callable[[], np.ndarray] | None,
) -> tuple[OutputLayout, int, str]:
    """Tell apart the two heads of shape [1, N, 6] when the metadata does not say end-to-end.

    The candidates are an end-to-end head (x1, y1, x2, y2, score, class) and a one-class YOLOv5 head (cx,
    cy, w, h, objectness, class score). Independent evidence, each of which may abstain: the class names (a
    YOLOv5 [.., 6] head holds one class), the row count (anchor grid of this input or not) and the values
    of one inference. All that speak must agree; otherwise, or when none speaks, the model is refused with
    the shape named, rather than decoded one way at a guess.
    """
    votes: list[tuple[OutputLayout, str]] = []
    if len(names) >= 2:
        votes.append((OutputLayout.END2END, f"the metadata names {len(names)} classes"))
    n = out.shape[1]
    if _static(n):
        hw = f"{input_hw[0]}x{input_hw[1]}"
        if n in anchor_counts(input_hw, stride):
            votes.append((OutputLayout.YOLOV5, f"{n} rows is the anchor grid of a {hw} input"))
        else:
            votes.append((OutputLayout.END2END, f"{n} rows is not an anchor grid of a {hw} input"))
    if probe is not None:
        vote = _vote_by_values(probe())
        if vote is not None:
            votes.append(vote)
    shape = f"output {out.name!r} has shape {format_shape(out.shape)}"
    both = (
        "an end-to-end head (x1, y1, x2, y2, score, class) and a one-class YOLOv5 head "
        "(cx, cy, w, h, objectness, class score) have this shape"
    )
    if not votes:
        raise ModelShapeError(
            f"{shape}: {both}, and neither metadata, row count nor values tell which; {_HOW_TO_CHOOSE}"
        )
    kinds = {k for k, _ in votes}
    if len(kinds) > 1:
        said = "; ".join(f"{k.value}: {why}" for k, why in votes)
        raise ModelShapeError(f"{shape}: {both}, and the evidence disagrees ({said}); {_HOW_TO_CHOOSE}")
    kind = kinds.pop()
    why = "; ".join(why for _, why in votes)
    if kind is OutputLayout.YOLOV5:
        return (*_yolov5(out, names), why)
    return OutputLayout.END2END, len(names), why


_TOL = 1e-3


def _vote_by_values(pred: np.ndarray) -> tuple[OutputLayout, str] | None:
    """Judge [.., N, 6] rows of an inference as end-to-end or YOLOv5 rows; None to abstain.

    End-to-end rows are boxes with x2 >= x1 and y2 >= y1 and an integer class id; YOLOv5 rows have
    objectness and class score in 0..1 and w, h >= 0. A model whose rows break one reading and fit the
    other is that other; when both fit (a one-class end-to-end head) or neither does, the values abstain.
    """
    if pred.ndim < 2 or pred.shape[-1] != 6:
        return None
    rows = pred.reshape(-1, 6).astype(np.float64)
    rows = rows[np.isfinite(rows).all(axis=1)]
    if not len(rows):
        return None
    c0, c1, c2, c3, c4, c5 = rows.T
    not_e2e = (c2 < c0 - _TOL) | (c3 < c1 - _TOL) | (np.abs(c5 - np.rint(c5)) > _TOL)
    not_v5 = (c4 < -_TOL) | (c4 > 1 + _TOL) | (c5 < -_TOL) | (c5 > 1 + _TOL) | (c2 < -_TOL) | (c3 < -_TOL)
    bad_e2e, bad_v5 = int(not_e2e.sum()), int(not_v5.sum())
    if bad_e2e and not bad_v5:
        return OutputLayout.YOLOV5, (
            f"{bad_e2e} of {len(rows)} rows of a test inference are no x1,y1,x2,y2 box with a class id, "
            "all fit cx,cy,w,h,objectness,class score"
        )
    if bad_v5 and not bad_e2e:
        return OutputLayout.END2END, (
            f"{bad_v5} of {len(rows)} rows of a test inference are no cx,cy,w,h,objectness,class score, "
            "all fit x1,y1,x2,y2,score,class id"
        )
    return None
