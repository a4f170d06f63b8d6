"""INT8 (Q/DQ, run by ONNX Runtime on CPU) against FP32 on the same model: agreement and speed.

Agreement is measured on held-out frames (never used for calibration), on two splits of the source
(calibrate on even frames spread over the whole clip, score on the odd ones, and the reverse) because one
box moves F1 by ~0.4% on a short clip; and speed, backend only, interleaved in rounds. Variants: target
(the TensorRT file or its CPU twin) x placement x what stays float, "auto" being `vigil engine
calibrate`'s module search on the split's calibration frames. All classes are scored, as `vigil engine
calibrate`'s gate does (not the config's class filter).
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

from app.config import ModelConfig
from app.engine.calibrate import DEFAULT_RECIPE, TARGET_OPTIONS, YOLOV8_RECIPE

GATE_F1, GATE_SHIFT = 0.95, 0.03
_TRT = {**DEFAULT_RECIPE, **TARGET_OPTIONS["tensorrt"], "target": "tensorrt"}
_CPU = {**DEFAULT_RECIPE, **TARGET_OPTIONS["cpu"], "target": "cpu"}
# name -> quantize() options ("float_modules": "auto" = the search); the first two are what `vigil engine
# calibrate` writes by default
VARIANTS: dict[str, dict] = {
    "TensorRT file (default): Conv inputs quantized, percentile; modules kept float by the search": _TRT,
    "CPU twin (default): every op, asymmetric uint8, int32 biases; its own search": _CPU,
    "TensorRT file, every convolution quantized": {**_TRT, "float_modules": ()},
    "CPU twin, every convolution quantized": {**_CPU, "float_modules": ()},
    "TensorRT file, every convolution, its output quantized too": {**_TRT, "float_modules": (), "conv_outputs": True},
    "CPU twin, every convolution, symmetric activations": {**_CPU, "float_modules": (), "symmetric_activations": True},
    "YOLOv8 recipe (fall model's): 3 stem convs and head feeders float, Conv outputs quantized": {
        **YOLOV8_RECIPE,
        "target": "tensorrt",
    },
    "all ops, nothing float (the head's decode too)": {
        "method": "percentile",
        "exclude": "none",
        "target": "cpu",
        "symmetric_activations": False,
    },
}


def bench_int8(model: ModelConfig, source: str, calib: int = 125, rounds: int = 5,
               variants: dict[str, dict] | None = None) -> dict:  # fmt: skip
    """Compare each INT8 variant with FP32 on both splits of `source`.

    Args:
        model: The FP32 model (run on ONNX Runtime, all classes).
        source: A video file; every frame is read.
        calib: Calibration frames per split, spread over the split's half.
        rounds: Interleaved speed rounds.
        variants: Name -> ``quantize()`` options; None runs VARIANTS.

    Returns:
        Per variant: F1, mAP50 and confidence shift against FP32 for each split, the splits on which the
        gate (GATE_F1, GATE_SHIFT) passes, and fps (frames per second, median of rounds) relative to FP32.
    """
    from app.engine.agreement import agreement, map50
    from app.engine.calibrate import (
        calibrate_ranges,
        evenly_spaced_frames,
        interleaved_fps,
        quantize,
        search_float_modules,
    )
    from app.inference.detector import Detector

    model = model.model_copy(update={"backend": "onnxruntime", "classes": None})
    frames = [f for _, f in evenly_spaced_frames(source, 10**9)]  # every frame

    def spread(fs: list, n: int) -> list:
        step = max(1, len(fs) // n)
        return fs[::step][:n]

    splits = {"even->odd": (spread(frames[0::2], calib), frames[1::2]),
              "odd->even": (spread(frames[1::2], calib), frames[0::2])}  # fmt: skip
    ref = Detector.from_config(model)
    ref_dets = {k: [ref.detect(f)[0] for f in held] for k, (_, held) in splits.items()}
    out: dict = {
        "imgsz": list(ref.info.input_hw),
        "calibration_frames": {k: len(c) for k, (c, _) in splits.items()},
        "holdout_frames": {k: len(h) for k, (_, h) in splits.items()},
        "reference_boxes": {k: sum(len(d) for d in v) for k, v in ref_dets.items()},
        "variants": {},
    }
    detectors = {"fp32": ref}
    with tempfile.TemporaryDirectory() as tmp:
        ranges = {}
        for j, (split, (cal, _)) in enumerate(splits.items()):
            ranges[split] = calibrate_ranges(model.path, cal, Path(tmp) / f"ranges-{j}.json", imgsz=model.imgsz)
        for i, (name, options) in enumerate((variants or VARIANTS).items()):
            per_split = {}
            for j, (split, (cal, held)) in enumerate(splits.items()):
                qdq = Path(tmp) / f"int8-{i}-{j}.onnx"
                opts = dict(options)
                search = None
                if opts.get("float_modules") == "auto":
                    recipe = {k: v for k, v in opts.items() if k not in ("float_modules", "target")}
                    search = search_float_modules(model.path, cal, ranges_cache=ranges[split], target=opts["target"],
                                                  recipe=recipe, min_f1=GATE_F1, max_shift=GATE_SHIFT,
                                                  imgsz=model.imgsz, progress=False)  # fmt: skip
                    opts["float_modules"] = tuple(search["float_modules"])
                settings = quantize(model.path, qdq, cal, ranges_cache=ranges[split], imgsz=model.imgsz, **opts)
                det = Detector.from_config(model.model_copy(update={"path": str(qdq)}))
                dets = [det.detect(f)[0] for f in held]
                a = agreement(ref_dets[split], dets)
                per_split[split] = {"f1": round(a.f1, 4), "shift": round(a.mean_confidence_shift, 4),
                                    "map50": round(map50(ref_dets[split], dets), 4),
                                    "float_modules": settings["float_modules"]}  # fmt: skip
                if search is not None:
                    keys = ("int8_modules", "ranking", "sensitivity", "tried", "int8_conv_flops_share", "seconds")
                    per_split[split]["search"] = {k: search[k] for k in keys}
                if name in detectors:
                    detectors[name].backend.close()
                detectors[name] = det  # speed is measured on the last split's model
            out["variants"][name] = {
                "splits": per_split,
                "gate_passed_on": [s for s, v in per_split.items() if v["f1"] >= GATE_F1 and v["shift"] <= GATE_SHIFT],
            }
        # speed: backend only, the same prepared tensors, interleaved rounds
        fps = interleaved_fps(detectors, [ref.preprocess(f)[0] for f in frames[:20]], rounds)
    base = statistics.median(fps["fp32"])
    out["fp32_fps"] = round(base, 2)
    out["rounds"] = rounds
    for k, v in out["variants"].items():
        v["fps"] = round(statistics.median(fps[k]), 2)
        v["speedup_vs_fp32"] = round(statistics.median(fps[k]) / base, 3)
    return out
