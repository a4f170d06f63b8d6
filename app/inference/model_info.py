"""What we need to know about a detector model, read from its I/O and metadata, validated up front so a
wrong model fails at load with its shape named, not with an IndexError mid-stream."""

from __future__ import annotations

import ast
import logging
from dataclasses import dataclass

import numpy as np

from app.backends.base import Backend, TensorSpec

# ModelShapeError lives in decode.py (the decoder raises it too); callers keep importing it from here
from app.inference.decode import ModelShapeError, NmsOutputRoles, OutputLayout, format_shape, resolve_nms_roles

__all__ = ["ModelInfo", "ModelShapeError"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """num_classes is what the model's head says; for heads that only carry class ids (END2END,
    EFFICIENT_NMS) it is len(names) from the metadata, or 0 when there are none (TensorRT engines from
    third-party exporters usually have none): 0 means unknown, and ids then show as their number
    (Detections.to_list falls back to str(id))."""

    input_name: str
    input_hw: tuple[int, int]
    input_dtype: np.dtype
    layout: OutputLayout
    num_classes: int
    names: dict[int, str]
    stride: int
    task: str
    output_roles: NmsOutputRoles | None = None  # EFFICIENT_NMS only: which output index holds what

    @classmethod
    def from_backend(cls, backend: Backend, imgsz: int | None = None) -> ModelInfo:
        meta = backend.metadata
        inp = backend.inputs[0]
        if len(inp.shape) != 4 or inp.shape[1] not in (3, "3"):
            raise ModelShapeError(f"input {inp.name!r} has shape {format_shape(inp.shape)}; expected [1, 3, H, W]")
        input_hw = _input_hw(inp, meta, imgsz)
        task = meta.get("task", "detect")
        if task != "detect":
            raise ModelShapeError(f"model task is {task!r}; only 'detect' models are supported")
        names = _parse_names(meta.get("names"))
        if len(backend.outputs) < 1:
            raise ModelShapeError("model has no outputs")
        roles = None
        if _looks_like_efficient_nms(backend.outputs):
            roles = resolve_nms_roles([(o.name, o.shape, o.dtype) for o in backend.outputs])
            layout, nc = OutputLayout.EFFICIENT_NMS, len(names)
        else:
            layout, nc = _layout(backend.outputs[0], names, meta)
        if not names:
            names = {i: f"class{i}" for i in range(nc)}
        stride = int(meta.get("stride", 32))
        return cls(inp.name, input_hw, inp.dtype, layout, nc, names, stride, task, roles)


def _looks_like_efficient_nms(outputs: list[TensorSpec]) -> bool:
    """Four outputs with a [.., K, 4] boxes tensor or an integer [.., 1] count: claim the model here, so that
    a malformed NMS export fails naming all four shapes instead of being judged by its first output alone."""
    if len(outputs) != 4:
        return False
    for o in outputs:
        if len(o.shape) == 3 and o.shape[2] == 4:
            return True
        if np.dtype(o.dtype).kind in "iu" and 1 <= len(o.shape) <= 2 and o.shape[-1] == 1:
            return True
    return False


def _input_hw(inp: TensorSpec, meta: dict[str, str], imgsz: int | None) -> tuple[int, int]:
    h, w = inp.shape[2], inp.shape[3]
    if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0:
        if imgsz is not None and (imgsz, imgsz) != (h, w):
            log.warning("model input is fixed at %dx%d; ignoring imgsz=%d", h, w, imgsz)
        return h, w
    if imgsz is not None:
        return imgsz, imgsz
    if "imgsz" in meta:
        sz = ast.literal_eval(meta["imgsz"])
        return (int(sz[0]), int(sz[1])) if isinstance(sz, list | tuple) else (int(sz), int(sz))
    return 640, 640


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


def _layout(out: TensorSpec, names: dict[int, str], meta: dict[str, str]) -> tuple[OutputLayout, int]:
    shape = out.shape
    bad = ModelShapeError(
        f"output {out.name!r} has shape {format_shape(shape)}; expected a YOLO detector output "
        "[1, 4+classes, anchors] (v8/v11) or [1, detections, 6] (end-to-end/NMS export)"
    )
    if len(shape) != 3:
        raise bad
    _, a, b = shape
    end2end_hint = meta.get("end2end") == "True" or "'nms': True" in meta.get("args", "")
    if b == 6 and (a != 6 or end2end_hint):
        return OutputLayout.END2END, len(names)
    if isinstance(a, int):
        nc = a - 4
        if nc < 1:
            raise bad
        if names and nc < len(names):
            raise ModelShapeError(
                f"output {out.name!r} has shape {format_shape(shape)}: {nc} class channels, "
                f"but the metadata names {len(names)} classes"
            )
        if names:
            nc = len(names)  # channels beyond the classes are extras (masks, keypoints)
        if isinstance(b, int) and b < a:
            raise bad
        return OutputLayout.DENSE, nc
    raise bad
