"""Which ONNX the TensorRT builder parses, and with which flags, for a requested precision.

TensorRT 10 takes precision from builder flags (FP16, INT8) over an FP32 network. TensorRT 11 networks
are strongly typed: the ONNX's own types decide, so FP16 means an FP16 ONNX (converted here, I/O kept
float32 so the runtime feeds and reads the same buffers) and INT8 means a Q/DQ ONNX (made by
`vigil engine calibrate`). The decision is pure logic over the ONNX file, tested on CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from app.assets import sha256_file

QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


class PrecisionError(ValueError):
    """The requested precision cannot be built from this ONNX with this TensorRT."""


@dataclass(frozen=True)
class PrecisionPlan:
    """What the builder parses and how, for one precision and TensorRT major version."""

    onnx: Path  # what the parser reads
    flags: tuple[str, ...]  # trt.BuilderFlag names to set
    strongly_typed: bool  # create the network with NetworkDefinitionCreationFlag.STRONGLY_TYPED
    legacy_calibrator: bool  # TensorRT 10 implicit INT8 with IInt8EntropyCalibrator2 (deprecated)
    note: str  # one line for the build log and the manifest


def is_qdq(onnx_path: Path) -> bool:
    """Whether the ONNX graph has QuantizeLinear/DequantizeLinear nodes (an explicitly quantized model).

    Only the graph is read, not external weight files.
    """
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return any(node.op_type in QDQ_OPS for node in model.graph.node)


def fp16_onnx(src: Path, work_dir: Path) -> Path:
    """Make `src` with FP16 weights and activations and float32 inputs/outputs.

    Converted with ONNX Runtime's ``convert_float_to_float16``, cached in `work_dir` by the source's hash
    (a changed model is converted again).

    Returns:
        Path of the FP16 copy, ``<stem>.fp16-<hash12>.onnx`` in ``work_dir``.
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    dst = Path(work_dir) / f"{src.stem}.fp16-{sha256_file(src)[:12]}.onnx"
    if dst.is_file():
        return dst
    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_suffix(".tmp")
    onnx.save(model, str(tmp))
    tmp.replace(dst)
    return dst


def plan_precision(
    onnx_path: Path, precision: str, trt_major: int, work_dir: Path, *, legacy_int8: bool = False
) -> PrecisionPlan:
    """Decide which ONNX to parse and which builder flags to set.

    Args:
        onnx_path: The model to build.
        precision: ``fp32``, ``fp16`` or ``int8``.
        trt_major: TensorRT major version (11 and later are strongly typed).
        work_dir: Where an FP16 copy is cached (TensorRT 11 FP16 only).
        legacy_int8: Allow INT8 by the deprecated implicit calibrator for a non-Q/DQ model (TensorRT 10 only).

    Returns:
        The plan, with a one-line note for the build log and the manifest.

    Raises:
        PrecisionError: INT8 from a model without Q/DQ nodes (unless legacy on TensorRT 10), legacy INT8 on
            TensorRT 11+, a Q/DQ model at another precision, or an unknown precision.
    """
    qdq = is_qdq(onnx_path)
    if precision == "int8":
        if qdq:
            if trt_major >= 11:
                return PrecisionPlan(onnx_path, (), True, False, "INT8 from the Q/DQ ONNX (strongly typed)")
            # FP16 too, so the layers the Q/DQ model keeps in float (the head) run in FP16, not FP32.
            return PrecisionPlan(onnx_path, ("INT8", "FP16"), False, False, "INT8 from the Q/DQ ONNX (explicit)")
        if legacy_int8:
            if trt_major >= 11:
                raise PrecisionError(
                    f"TensorRT {trt_major} has no implicit INT8 calibration; make a Q/DQ ONNX with "
                    "`vigil engine calibrate` and build that"
                )
            return PrecisionPlan(
                onnx_path, ("INT8", "FP16"), False, True, "INT8 by implicit calibration (deprecated legacy path)"
            )
        raise PrecisionError(
            f"{onnx_path.name} has no Q/DQ nodes: INT8 needs a Q/DQ ONNX (`vigil engine calibrate`, then build "
            "that), or --legacy-calibrator on TensorRT 10 (deprecated)"
        )
    if qdq:
        raise PrecisionError(f"{onnx_path.name} is a Q/DQ (INT8) ONNX; build it with --precision int8")
    if precision == "fp16":
        if trt_major >= 11:
            return PrecisionPlan(fp16_onnx(onnx_path, work_dir), (), True, False,
                                 "FP16 from an FP16 copy of the ONNX (strongly typed, float32 I/O)")  # fmt: skip
        return PrecisionPlan(onnx_path, ("FP16",), False, False, "FP16 by builder flag")
    if precision == "fp32":
        return PrecisionPlan(onnx_path, (), trt_major >= 11, False, "FP32")
    raise PrecisionError(f"unknown precision {precision!r}: expected fp32, fp16 or int8")
