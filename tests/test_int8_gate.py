"""INT8 gates (CI), on frames never used for calibration.

Default model (YOLOv3-tiny COCO at 416): `vigil engine calibrate`'s default recipe (DEFAULT_RECIPE: one
calibration, then a module sensitivity search per target on the calibration frames) gives a TensorRT Q/DQ
file that passes the deployment gate (F1 at IoU 0.5 >= 0.95 and mean confidence shift <= 0.03 vs FP32) on
the held-out frames; its CPU twin (every op quantized, asymmetric uint8, int32 biases, searched on its own)
stays above a regression floor in both weight grids: the one this CPU gets (auto) and the 7-bit one
(reduce_range) that x86 CPUs without VNNI get, whose 8-bit u8s8 kernels saturate. Quantizing everything
(the head's decode too) collapses, and the gate rejects it.

Fall model (YOLOv8s at 640, configs/fall.yaml): the recipe measured for it (YOLOV8_RECIPE) passes the gate
too; kept because it is the only check of the Ultralytics graph's head, head feeders and stem handling on a
real model (~6 min on 2 cores).

Measured (docs/BENCHMARKS.md, INT8): see there for each split's numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.config import ModelConfig
from app.engine.agreement import agreement, map50
from app.engine.calibrate import (
    DEFAULT_RECIPE,
    YOLOV8_RECIPE,
    calibrate_ranges,
    evenly_spaced_frames,
    quantize,
    search_float_modules,
)
from app.engine.cpu_features import host_cpu_int8_isa, needs_reduce_range
from app.inference.detector import Detector


def _detect(path: Path, frames: list[np.ndarray]) -> list:
    det = Detector.from_config(ModelConfig(path=str(path), backend="onnxruntime"))
    try:
        return [det.detect(f)[0] for f in frames]
    finally:
        det.backend.close()


def _assert_gate(settings: dict, results: dict, auto_7bit: bool) -> None:
    """The TensorRT file passes the deployment gate, the CPU twin (each weight grid) the regression floor."""
    assert settings["tensorrt"]["reduce_range"] is False and settings["cpu"]["reduce_range"] is auto_7bit
    trt = results["tensorrt"]
    assert trt.f1 >= 0.95 and trt.mean_confidence_shift <= 0.03, trt.as_dict()
    for name in ("cpu", "cpu-7bit"):
        cpu = results.get(name, results["cpu"])
        assert cpu.f1 >= 0.90 and cpu.mean_confidence_shift <= 0.05, (name, cpu.as_dict())


@pytest.mark.slow
def test_default_recipe_passes_the_gate_on_the_coco_model(coco_model: Path, sample_video: Path, tmp_path: Path) -> None:
    frames = [f for _, f in evenly_spaced_frames(sample_video, 10**9)]  # every frame
    # disjoint: calibrated (and searched) on even frames spread over the whole clip, scored on the odd ones
    calib, held = frames[0::2], frames[1::2]
    rd = _detect(coco_model, held)
    ranges = calibrate_ranges(coco_model, calib, tmp_path / "ranges.json", method=DEFAULT_RECIPE["method"])
    recipe = {k: v for k, v in DEFAULT_RECIPE.items() if k != "float_modules"}
    auto_7bit = needs_reduce_range(host_cpu_int8_isa())
    results, settings, searches = {}, {}, {}
    for target in ("tensorrt", "cpu"):
        options = dict(recipe)  # placement "target": each file its own (TARGET_OPTIONS)
        searches[target] = search_float_modules(coco_model, calib, ranges_cache=ranges, target=target, recipe=options,
                                                min_f1=0.95, max_shift=0.03, progress=False)  # fmt: skip
        float_modules = tuple(searches[target]["float_modules"])
        variants = {target: {}}
        if target == "cpu" and not auto_7bit:  # the twin an x86 CPU without VNNI gets, scored on every CI machine
            variants["cpu-7bit"] = {"reduce_range": True}
        for name, kw in variants.items():
            path = tmp_path / f"{name}.onnx"
            settings[name] = quantize(coco_model, path, calib, target=target, ranges_cache=ranges,
                                      float_modules=float_modules, **options, **kw)  # fmt: skip
            qd = _detect(path, held)
            results[name] = agreement(rd, qd)
            print(name, f"{settings[name]['weight_bits']}-bit weights, float {settings[name]['float_modules']}",
                  results[name].as_dict(), "mAP50 vs FP32", round(map50(rd, qd), 4))  # fmt: skip
    for target, s in searches.items():
        print(target, "int8 modules", s["int8_modules"], "of the conv FLOPs", s["int8_conv_flops_share"], s["tried"])
        assert s["int8_modules"], f"{target}: the search should quantize some module: {s}"
        assert s["tried"] and set(s["int8_modules"]).isdisjoint(s["float_modules"])
    _assert_gate(settings, results, auto_7bit)
    # the head's decode quantized too (xywh in pixels and scores in one tensor): every confidence collapses
    quantize(coco_model, tmp_path / "all.onnx", [], target="cpu", method="percentile", exclude="none",
             ranges_cache=ranges)  # fmt: skip
    bad = agreement(rd, _detect(tmp_path / "all.onnx", held))
    assert bad.f1 < 0.5, f"the gate must reject a whole-graph INT8 model: {bad.as_dict()}"


@pytest.mark.slow
def test_yolov8_recipe_passes_the_gate_on_the_fall_model(fall_model: Path, sample_video: Path, tmp_path: Path) -> None:
    frames = [f for _, f in evenly_spaced_frames(sample_video, 10**9)]  # every frame
    calib, held = frames[0::2][:64], frames[1::2]  # disjoint: never scored on its own calibration frames
    rd = _detect(fall_model, held)
    ranges = tmp_path / "ranges.json"  # one calibration for every variant
    auto_7bit = needs_reduce_range(host_cpu_int8_isa())
    variants = {"tensorrt": {"target": "tensorrt"}, "cpu": {"target": "cpu"}}
    if not auto_7bit:
        variants["cpu-7bit"] = {"target": "cpu", "reduce_range": True}
    results, settings = {}, {}
    for name, kw in variants.items():
        path = tmp_path / f"{name}.onnx"
        settings[name] = quantize(fall_model, path, calib, ranges_cache=ranges, **kw, **YOLOV8_RECIPE)
        qd = _detect(path, held)
        results[name] = agreement(rd, qd)
        print(name, f"{settings[name]['weight_bits']}-bit weights", results[name].as_dict(),
              "mAP50 vs FP32", round(map50(rd, qd), 4))  # fmt: skip
    _assert_gate(settings, results, auto_7bit)
