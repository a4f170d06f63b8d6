"""`vigil bench --modes batch,small`: what batching and regions of interest buy (README "Regions and batching").

batch   Batch N (one backend call of N inputs) vs N batch-1 calls, inputs/s, for N in `BATCH_SIZES`, on prepared
        inputs of the source's frames, interleaved in each repeat, medians of the repeats. The decision it backs:
        `app.inference.batch.BATCH_ON_CPU`.
small   Recall of small people on a 1920x1080 clip made at bench time from the source: the model on the original
        frames gives the reference persons; each frame is scaled so that the median reference person is 1/10 of
        the 1080 frame high and placed on a plain grey (letterbox grey) 1920x1080 canvas, the reference boxes
        mapped with it. Then recall of persons (IoU >= 0.5 with a mapped reference, same class) with regions
        (square crops planned by `plan_regions` around the mapped reference boxes, i.e. where motion would be)
        vs the whole frame letterboxed, at the same model input size. Frames without a reference person are
        skipped.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import cv2
import numpy as np

from app.bench.common import BenchError
from app.config import ModelConfig
from app.letterbox import PAD_VALUE
from app.tracking.iou_tracker import iou_matrix

BATCH_SIZES = (1, 2, 4, 8)
CANVAS_WH = (1920, 1080)
PERSON_FRACTION = 0.1  # person height / canvas height
PERSON = 0  # COCO class id


def bench_batch(model: ModelConfig, source: str, repeats: int, sizes: tuple[int, ...] = BATCH_SIZES) -> dict:
    """Batch-N vs N x batch-1 throughput of the backend (inputs/s).

    Args:
        model: The model (its backend and threads as configured).
        source: Video whose frames are the inputs.
        repeats: Interleaved repeats; figures are medians over them.
        sizes: The batch sizes N.

    Returns:
        Per N: median inputs/s batched and one at a time, their ratio, and the per-repeat figures; `batching_pays`
        is True when every N > 1 is at least 10% faster batched.

    Raises:
        BenchError: The model has a fixed batch dimension.
    """
    from app.bench.common import read_frames
    from app.inference.detector import Detector

    det = Detector.from_config(model)
    try:
        if det.batch_capacity < max(sizes):
            raise BenchError(f"{model.path} takes {det.batch_capacity} input(s) per call: no batch axis to measure")
        tensors = [det.preprocess(f)[0] for f in read_frames(source, max(sizes))]
        det.warmup(2)
        det.backend.infer(np.concatenate(tensors, axis=0))  # let the runtime see the large shape once
        rows: dict[int, dict[str, list[float]]] = {n: {"batched": [], "single": []} for n in sizes}
        for _ in range(repeats):
            for n in sizes:
                batch = np.concatenate(tensors[:n], axis=0)
                calls = max(1, max(sizes) // n)  # every sample covers max(sizes) inputs: alike in length
                t0 = time.perf_counter()
                for _ in range(calls):
                    det.backend.infer(batch)
                rows[n]["batched"].append(calls * n / (time.perf_counter() - t0))
                t0 = time.perf_counter()
                for _ in range(calls):
                    for t in tensors[:n]:
                        det.backend.infer(t)
                rows[n]["single"].append(calls * n / (time.perf_counter() - t0))
        out: dict = {"backend": det.backend.name, "providers": det.backend.providers, "repeats": repeats,
                     "input_hw": list(det.info.input_hw), "sizes": {}}  # fmt: skip
        for n, r in rows.items():
            b, s = statistics.median(r["batched"]), statistics.median(r["single"])
            out["sizes"][str(n)] = {
                "batched_inputs_per_s": round(b, 2),
                "single_inputs_per_s": round(s, 2),
                "batched_vs_single": round(b / s, 3),
                "batched_rounds": [round(v, 2) for v in r["batched"]],
                "single_rounds": [round(v, 2) for v in r["single"]],
            }
        out["batching_pays"] = all(v["batched_vs_single"] >= 1.1 for k, v in out["sizes"].items() if k != "1")
        return out
    finally:
        det.close()


def matched(refs: np.ndarray, got: np.ndarray) -> int:
    """References matched one-to-one (greedy, best IoU first) by a detection at IoU >= 0.5."""
    if not len(refs) or not len(got):
        return 0
    iou = iou_matrix(refs, got)
    found = 0
    while iou.size and iou.max() >= 0.5:
        i, j = np.unravel_index(int(iou.argmax()), iou.shape)
        found += 1
        iou[i, :] = 0
        iou[:, j] = 0
    return found


@dataclass(slots=True)
class _Tally:
    found: int = 0  # reference persons matched
    inputs: int = 0  # detector inputs (regions) run
    ms: list[float] = field(default_factory=list)  # per frame


def bench_small(model: ModelConfig, source: str, n_frames: int) -> dict:
    """Recall of people about 1/10 of a 1080p frame high: regions vs the whole frame (see the module docstring).

    Args:
        model: The model (COCO: class 0 is a person).
        source: The video the clip is made from.
        n_frames: Frames taken evenly over the video.

    Returns:
        The clip's description, the reference person count, and per method (`regions`, `full_frame`): persons
        found, recall, detector inputs and median ms per frame.

    Raises:
        BenchError: No reference person in the frames taken.
    """
    from app.engine.calibrate import evenly_spaced_frames
    from app.inference.batch import FrameJob, StillFrame, detect_frames
    from app.inference.detector import Detector
    from app.inference.regions import full_frame, plan_regions

    det = Detector.from_config(model)
    try:
        frames = [f for _, f in evenly_spaced_frames(source, n_frames)]
        refs = []
        for f in frames:
            d = det.detect(f)[0]
            refs.append(d.xyxy[d.class_id == PERSON].copy())
        heights = [float(h) for r in refs for h in (r[:, 3] - r[:, 1])]
        if not heights:
            raise BenchError(f"the model finds no person in {n_frames} frames of {source}")
        cw, ch = CANVAS_WH
        scale = PERSON_FRACTION * ch / statistics.median(heights)
        fh, fw = frames[0].shape[:2]
        sw, sh = max(1, round(fw * scale)), max(1, round(fh * scale))
        if sw > cw or sh > ch:
            raise BenchError(f"people in {source} are too small to scale to 1/10 of 1080 inside 1920x1080")
        x0, y0 = (cw - sw) // 2, (ch - sh) // 2
        gain = np.array([sw / fw, sh / fh, sw / fw, sh / fh], np.float32)
        shift = np.array([x0, y0, x0, y0], np.float32)
        totals = {"regions": _Tally(), "full_frame": _Tally()}
        n_refs = used = 0
        canvas = np.full((ch, cw, 3), PAD_VALUE, np.uint8)
        for f, ref in zip(frames, refs):
            if not len(ref):
                continue
            used += 1
            canvas[y0 : y0 + sh, x0 : x0 + sw] = cv2.resize(f, (sw, sh), interpolation=cv2.INTER_AREA)
            mapped = ref * gain + shift
            n_refs += len(mapped)
            plans = {
                "regions": plan_regions(CANVAS_WH, mapped.tolist(), [], det.info.input_hw),
                "full_frame": full_frame(cw, ch),
            }
            for name, regions in plans.items():
                t0 = time.perf_counter()
                (o,) = detect_frames(det, [FrameJob("small", StillFrame(canvas), regions)])
                ms = (time.perf_counter() - t0) * 1000.0
                if o.detections is None:
                    raise BenchError(f"detection failed: {o.error}")
                got = o.detections.xyxy[o.detections.class_id == PERSON]
                t = totals[name]
                t.found += matched(mapped, got)
                t.inputs += len(regions)
                t.ms.append(ms)
        methods = {
            name: {
                "persons_found": t.found,
                "recall": round(t.found / n_refs, 3),
                "inputs_per_frame": round(t.inputs / used, 2),
                "ms_per_frame_p50": round(statistics.median(t.ms), 1),
            }
            for name, t in totals.items()
        }
        return {
            "clip": f"{used} of {n_frames} evenly spaced frames of {source} ({fw}x{fh}) with reference persons, "
            f"scaled x{scale:.3f} to {sw}x{sh} and centred on a grey {cw}x{ch} canvas (median person "
            f"{PERSON_FRACTION * ch:.0f} px high)",
            "input_hw": list(det.info.input_hw),
            "reference": "persons the model finds on the original frames (conf > model.conf), mapped to the canvas",
            "regions_from": "crops around the mapped reference boxes (where motion would be)",
            "reference_persons": n_refs,
            "frames": used,
            "methods": methods,
        }
    finally:
        det.close()


def render_regions(results: dict) -> list[str]:
    """Markdown lines for the batch and small modes of a run (empty when neither ran)."""
    lines: list[str] = []
    b = results["modes"].get("batch")
    if b:
        lines += [
            f"Batching ({b['backend']}, {b['providers']}, input {b['input_hw'][0]}x{b['input_hw'][1]}, medians of "
            f"{b['repeats']} interleaved repeats): batch-N vs N x batch-1, inputs/s; N = 1 is the control (the same "
            "work both ways: its ratio is the noise). Batching pays here (every N > 1 at least 1.1x): "
            f"**{'yes' if b['batching_pays'] else 'no'}**.",
            "",
            "| N | batched inputs/s | N x batch-1 inputs/s | batched / single |",
            "|---|---|---|---|",
        ]
        for n, r in b["sizes"].items():
            lines.append(f"| {n} | {r['batched_inputs_per_s']} | {r['single_inputs_per_s']} | "
                         f"{r['batched_vs_single']}x |")  # fmt: skip
        lines.append("")
    s = results["modes"].get("small")
    if s:
        lines += [
            f"Small objects: {s['clip']}. Reference: {s['reference']}; regions: {s['regions_from']}. "
            f"{s['reference_persons']} reference persons, model input {s['input_hw'][0]}x{s['input_hw'][1]}.",
            "",
            "| method | persons found | recall (IoU >= 0.5) | detector inputs per frame | ms per frame p50 |",
            "|---|---|---|---|---|",
        ]
        for name, m in s["methods"].items():
            lines.append(f"| {name.replace('_', ' ')} | {m['persons_found']} | {m['recall']} | "
                         f"{m['inputs_per_frame']} | {m['ms_per_frame_p50']} |")  # fmt: skip
        lines.append("")
    return lines
