"""INT8 (Q/DQ, ONNX Runtime CPU) against FP32 on the same model: agreement on held-out frames (frames
not used for calibration) and speed, interleaved in rounds. Variants: calibration method x what stays
float."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from app.config import ModelConfig

# name -> quantize() options; the first is the default of `vigil engine calibrate`
VARIANTS: dict[str, dict] = {
    "conv-only, head + 3 stem convs float": {"conv_only": True, "keep_first_convs": 3},
    "conv-only, head + 2 stem convs float": {"conv_only": True, "keep_first_convs": 2},
    "all ops, head float": {},
    "all ops, head post-processing float": {"exclude": "head-post"},
    "all ops, nothing float": {"exclude": "none"},
}


def bench_int8(model: ModelConfig, source: str, calib: int = 64, holdout: int = 100, rounds: int = 3,
               variants: dict[str, dict] | None = None) -> dict:  # fmt: skip
    from app.engine.agreement import agreement, map50
    from app.engine.calibrate import evenly_spaced_frames, quantize
    from app.inference.detector import Detector

    frames = [f for _, f in evenly_spaced_frames(source, 10**9)]  # every frame
    calib_frames, held = frames[0::2][:calib], frames[1::2][:holdout]  # disjoint: calibration never scores itself
    ref = Detector.from_config(model.model_copy(update={"backend": "onnxruntime"}))
    ref_dets = [ref.detect(f)[0] for f in held]
    out: dict = {"calibration_frames": len(calib_frames), "holdout_frames": len(held), "variants": {}}
    detectors = {"fp32": ref}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, options) in enumerate((variants or VARIANTS).items()):
            qdq = Path(tmp) / f"int8-{i}.onnx"
            settings = quantize(model.path, qdq, calib_frames, **{"method": "minmax", "exclude": "head", **options})
            det = Detector.from_config(model.model_copy(update={"path": str(qdq), "backend": "onnxruntime"}))
            dets = [det.detect(f)[0] for f in held]
            a = agreement(ref_dets, dets)
            out["variants"][name] = {**a.as_dict(), "map50_vs_fp32": round(map50(ref_dets, dets), 4),
                                     "quantize_s": settings["seconds"]}  # fmt: skip
            detectors[name] = det
        # speed: backend only, the same prepared tensors, interleaved rounds
        tensors = [ref.prepare(f)[0] for f in held[:20]]
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
        v["gate_f1_0.95_shift_0.03"] = v["f1"] >= 0.95 and v["mean_confidence_shift"] <= 0.03
    return out
