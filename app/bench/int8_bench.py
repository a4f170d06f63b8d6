"""INT8 (Q/DQ, run by ONNX Runtime on CPU) against FP32 on the same model: agreement on held-out frames
(never used for calibration), on two splits of the source (calibrate on even frames, score on odd ones,
and the reverse) because one box moves F1 by ~1% on a short clip; and speed, backend only, interleaved in
rounds. Variants: target (the TensorRT file or its CPU twin) x calibration method x what stays float."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from app.config import ModelConfig
from app.engine.calibrate import DEFAULT_RECIPE

_NO_FEEDERS = {**DEFAULT_RECIPE, "float_modules": ()}
# name -> quantize() options; the first two are what `vigil engine calibrate` writes by default
VARIANTS: dict[str, dict] = {
    "TensorRT file (default): conv only, percentile 99.999; head, 3 stem convs, head feeders float": DEFAULT_RECIPE,
    "CPU twin of the default (uint8 activations, int32 biases)": {**DEFAULT_RECIPE, "target": "cpu"},
    "TensorRT file, head feeders quantized": _NO_FEEDERS,
    "CPU twin, head feeders quantized": {**_NO_FEEDERS, "target": "cpu"},
    "TensorRT file, head feeders quantized, MinMax calibration": {**_NO_FEEDERS, "method": "minmax"},
    "TensorRT file, head feeders quantized, entropy calibration": {**_NO_FEEDERS, "method": "entropy"},
    "all ops, nothing float": {"exclude": "none", "method": "minmax", "target": "cpu"},
}
GATE_F1, GATE_SHIFT = 0.95, 0.03


def bench_int8(model: ModelConfig, source: str, calib: int = 64, rounds: int = 3,
               variants: dict[str, dict] | None = None) -> dict:  # fmt: skip
    from app.engine.agreement import agreement, map50
    from app.engine.calibrate import evenly_spaced_frames, quantize
    from app.inference.detector import Detector

    frames = [f for _, f in evenly_spaced_frames(source, 10**9)]  # every frame
    splits = {"even->odd": (frames[0::2][:calib], frames[1::2]), "odd->even": (frames[1::2][:calib], frames[0::2])}
    ref = Detector.from_config(model.model_copy(update={"backend": "onnxruntime"}))
    ref_dets = {k: [ref.detect(f)[0] for f in held] for k, (_, held) in splits.items()}
    out: dict = {
        "calibration_frames": calib,
        "holdout_frames": {k: len(h) for k, (_, h) in splits.items()},
        "reference_boxes": {k: sum(len(d) for d in v) for k, v in ref_dets.items()},
        "variants": {},
    }
    detectors = {"fp32": ref}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, options) in enumerate((variants or VARIANTS).items()):
            per_split = {}
            for j, (split, (cal, held)) in enumerate(splits.items()):
                qdq = Path(tmp) / f"int8-{i}-{j}.onnx"
                settings = quantize(model.path, qdq, cal, **options)
                det = Detector.from_config(model.model_copy(update={"path": str(qdq), "backend": "onnxruntime"}))
                dets = [det.detect(f)[0] for f in held]
                a = agreement(ref_dets[split], dets)
                per_split[split] = {"f1": round(a.f1, 4), "shift": round(a.mean_confidence_shift, 4),
                                    "map50": round(map50(ref_dets[split], dets), 4),
                                    "quantize_s": settings["seconds"]}  # fmt: skip
                detectors[name] = det  # speed is measured on the last split's model
            out["variants"][name] = {
                "splits": per_split,
                "gate_passed_on": [s for s, v in per_split.items() if v["f1"] >= GATE_F1 and v["shift"] <= GATE_SHIFT],
            }
        # speed: backend only, the same prepared tensors, interleaved rounds
        tensors = [ref.preprocess(f)[0] for f in frames[:20]]
        fps: dict[str, list[float]] = {k: [] for k in detectors}
        for _ in range(rounds):
            for k, det in detectors.items():
                t0 = time.perf_counter()
                for t in tensors:
                    det.backend.infer(t)
                fps[k].append(len(tensors) / (time.perf_counter() - t0))
    base = statistics.median(fps["fp32"])
    out["fp32_fps"] = round(base, 2)
    for k, v in out["variants"].items():
        v["fps"] = round(statistics.median(fps[k]), 2)
        v["speedup_vs_fp32"] = round(statistics.median(fps[k]) / base, 3)
    return out
