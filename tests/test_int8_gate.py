"""INT8 on the default model (CI): the TensorRT Q/DQ file of `vigil engine calibrate`'s default recipe
passes the deployment gate (F1 at IoU 0.5 >= 0.95 and mean confidence shift <= 0.03 vs FP32) on frames
it was not calibrated on; its CPU twin (same ranges, uint8/int32 for ONNX Runtime's integer kernels) stays
above a regression floor; and the gate rejects a collapsed whole-graph model.

Measured (docs/BENCHMARKS.md): TensorRT file F1 0.961 / shift 0.017 on this split, 0.960 / 0.019 on the
reverse one; the CPU twin 0.940 / 0.021 on this split, under the gate, hence only a floor for it."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config import ModelConfig
from app.engine.agreement import agreement, map50
from app.engine.calibrate import DEFAULT_RECIPE, evenly_spaced_frames, quantize
from app.inference.detector import Detector


@pytest.mark.slow
def test_default_int8_recipe_passes_the_gate(default_model: Path, sample_video: Path, tmp_path: Path) -> None:
    frames = [f for _, f in evenly_spaced_frames(sample_video, 10**9)]  # every frame
    calib, held = frames[0::2][:64], frames[1::2]  # disjoint: never scored on its own calibration frames
    ref = Detector.from_config(ModelConfig(path=str(default_model), backend="onnxruntime"))
    rd = [ref.detect(f)[0] for f in held]
    ranges = tmp_path / "ranges.json"
    results = {}
    for target in ("tensorrt", "cpu"):
        path = tmp_path / f"{target}.onnx"
        quantize(default_model, path, calib, target=target, ranges_cache=ranges, **DEFAULT_RECIPE)
        q = Detector.from_config(ModelConfig(path=str(path), backend="onnxruntime"))
        qd = [q.detect(f)[0] for f in held]
        results[target] = agreement(rd, qd)
        print(target, results[target].as_dict(), "mAP50 vs FP32", round(map50(rd, qd), 4))
    trt, cpu = results["tensorrt"], results["cpu"]
    assert trt.f1 >= 0.95 and trt.mean_confidence_shift <= 0.03, trt.as_dict()
    assert cpu.f1 >= 0.90 and cpu.mean_confidence_shift <= 0.05, cpu.as_dict()
    quantize(default_model, tmp_path / "all.onnx", calib[:16], method="minmax", exclude="none")  # collapses
    collapsed = Detector.from_config(ModelConfig(path=str(tmp_path / "all.onnx"), backend="onnxruntime"))
    bad = agreement(rd, [collapsed.detect(f)[0] for f in held])
    assert bad.f1 < 0.5, "the gate must reject a whole-graph INT8 model"
