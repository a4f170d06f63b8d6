"""`vigil bench`: the modes of the core issue, side by side in one process tree on the same frames.

  backend      the bare backend loop on pre-made input tensors (the limit)
  ultralytics  Ultralytics `YOLO(onnx).predict(stream=True)` on the same file (when installed)
  detect       `vigil detect`'s loop (decode + preprocess overlapped with inference) on the same file
  live         `vigil run`: a source paced faster than the detector; frame age, drops, flatness
  soak         `vigil run` until N results, RSS of main process and worker sampled (memory flatness)
  engine       the backend alone vs the live pipeline per frame (`--backend tensorrt` on a GPU)
  realtime     the default config live at 416 and 320 vs the bare backend of the same model, the split of
               the time per frame, and a threads x spin_wait sweep (app/bench/realtime_bench.py)
  batch        batch-N vs N x batch-1 backend throughput (app/bench/regions_bench.py)
  small        recall of small people on a 1080p clip made from the source: regions vs the whole frame
  static       motion gating on a static scene: detections and CPU, gating on vs off (app/bench/scheduling_bench.py)
  capacity     cameras at detect.fps 5: rates, fairness, frame age; how many hold 5/s with half static

Medians and ratios come from one run; the machine is noisy, so compare only numbers from the same run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import cv2
import numpy as np

from app.bench.common import BenchError, live_config, live_summary, read_frames, run_to_end
from app.bench.recorders import RssSampler, StopAfterResults
from app.bench.report import machine_info, write_markdown
from app.config import ModelConfig

log = logging.getLogger(__name__)


def _summary(rounds: list[tuple[list[float], float, int]]) -> dict:
    """Median fps over rounds (interleaved with the other modes), latency percentiles over all frames."""
    lat = np.asarray([v for r in rounds for v in r[0]], float)
    fps = [n / wall for _, wall, n in rounds if wall > 0]
    return {
        "frames": sum(n for _, _, n in rounds),
        "rounds": len(rounds),
        "fps": round(statistics.median(fps), 3),
        "fps_rounds": [round(f, 3) for f in fps],
        "latency_ms": {
            "p50": round(float(np.percentile(lat, 50)), 2),
            "p95": round(float(np.percentile(lat, 95)), 2),
            "p99": round(float(np.percentile(lat, 99)), 2),
        },
    }


def _timed(iterable: Iterable[object]) -> tuple[list[float], float, int]:
    """Per-item latency (time between consecutive items) and wall time of consuming an iterator."""
    lat: list[float] = []
    t0 = last = time.perf_counter()
    for _ in iterable:
        now = time.perf_counter()
        lat.append((now - last) * 1000)
        last = now
    return lat, time.perf_counter() - t0, len(lat)


Runner = Callable[[], tuple[list[float], float, int]]


def backend_runner(model: ModelConfig, source: str, n: int) -> Runner:
    """The limit: the backend alone on input tensors prepared beforehand."""
    from app.inference.detector import Detector

    det = Detector.from_config(model)
    tensors = [det.preprocess(f)[0] for f in read_frames(source, n)]
    det.warmup(2)
    return lambda: _timed(det.backend.infer(t) for t in tensors)


def ultralytics_runner(model: ModelConfig, source: str, n: int) -> Runner | None:
    """A runner for the Ultralytics reference predictor on `n` frames of `source`.

    None when ultralytics is not installed.
    """
    os.environ.setdefault("YOLO_OFFLINE", "1")  # no DNS probes from the reference either
    try:
        from ultralytics import YOLO
    except ImportError:
        log.warning("ultralytics is not installed (pip install '.[export]'); skipping its mode")
        return None
    from app.export import ultralytics_logs_to_stderr

    ultralytics_logs_to_stderr()
    yolo = YOLO(model.path, task="detect")
    yolo.predict(read_frames(source, 1)[0], conf=model.conf, iou=model.iou, verbose=False)

    def run() -> tuple[list[float], float, int]:
        stream = yolo.predict(source, stream=True, conf=model.conf, iou=model.iou, verbose=False)
        return _timed(itertools.islice(stream, n))

    return run


def detect_runner(model: ModelConfig, source: str, n: int) -> Runner:
    """`vigil detect`'s loop: open the file, decode, preprocess, infer, decode boxes, every frame."""
    from app.capture.sources import open_source
    from app.inference.detector import Detector
    from app.pipeline.offline import detect_frames

    det = Detector.from_config(model)
    det.warmup(2)

    def run() -> tuple[list[float], float, int]:
        with open_source(source) as src:
            return _timed(detect_frames(det, src, n))

    return run


def bench_live(model: ModelConfig, source: str, seconds: float) -> dict:
    """The live pipeline on `source` for `seconds` s: throughput, inference and frame-age percentiles (ms)."""
    summary, samples = live_summary(model, source, seconds)
    cam = summary.cameras["bench"]
    ages, inf = samples.frame_ages_ms[2:], samples.inference_ms[2:]  # skip the first, pre-steady frames
    cap = cv2.VideoCapture(source)
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    cap.release()
    med_inf = statistics.median(inf)
    bound = 1.5 * med_inf + 1000.0 / fps
    half = len(ages) // 2
    p99 = float(np.percentile(ages, 99))
    return {
        "seconds": round(summary.duration_s, 1),
        "camera_fps": round(fps, 2),
        "frames_captured": cam["frames_captured"],
        "frames_processed": cam["frames_processed"],
        "frames_dropped": cam["frames_dropped"],
        "processed_fps": round(cam["frames_processed"] / summary.duration_s, 2),
        "inference_ms_p50": round(med_inf, 2),
        "inference_ms_p99": round(float(np.percentile(inf, 99)), 2),
        "frame_age_ms": {
            "p50": round(float(np.percentile(ages, 50)), 2),
            "p95": round(float(np.percentile(ages, 95)), 2),
            "p99": round(p99, 2),
            "p99_first_half": round(float(np.percentile(ages[:half], 99)), 2),
            "p99_second_half": round(float(np.percentile(ages[half:], 99)), 2),
        },
        "bound_ms": round(bound, 2),
        "within_bound": p99 <= bound,
    }


def bench_soak(model: ModelConfig, source: str, frames: int) -> dict:
    """The live pipeline over `frames` frames of `source`, sampling each process's RSS once a second.

    Returns:
        Frames processed, duration (s) and, per process, RSS at start, end and max after warm-up (MiB) and
        its growth (%).
    """
    from app.pipeline.live import LivePipeline

    cfg = live_config(model, source)
    rss = RssSampler(1.0)
    pipe = LivePipeline(cfg, [StopAfterResults(frames), rss])
    summary = run_to_end(pipe)
    out: dict = {
        "frames_processed": summary.cameras["bench"]["frames_processed"],
        "seconds": round(summary.duration_s, 1),
    }
    for proc, samples in rss.rss_mb.items():
        steady = samples[len(samples) // 10 :]  # after warm-up
        if len(steady) < 2:
            continue
        base = statistics.median(steady[: max(1, len(steady) // 10)])
        end = statistics.median(steady[-max(1, len(steady) // 10) :])
        out[proc] = {
            "rss_mb_start": round(base, 1),
            "rss_mb_end": round(end, 1),
            "rss_mb_max": round(max(steady), 1),
            "growth_pct": round((end - base) / base * 100, 2),
        }
    return out


def _bench_realtime(model: ModelConfig, args: argparse.Namespace) -> dict:
    from app.bench.realtime_bench import RealtimeOptions, bench_realtime, parse_decode_sweep, parse_sweep

    opts = RealtimeOptions(
        config=args.config,
        model=args.model,
        source=args.source,
        sizes=tuple(int(s) for s in args.realtime_sizes.split(",") if s.strip()),
        seconds=args.realtime_seconds,
        warmup_s=args.realtime_warmup,
        rounds=args.rounds,
        backend_frames=args.frames,
        sweep=parse_sweep(args.sweep),
        sweep_seconds=args.sweep_seconds,
        sweep_rounds=args.sweep_rounds,
        decode_sweep=parse_decode_sweep(args.decode_sweep),
        quiet_wait_s=args.quiet_wait,
        quiet_retries=args.quiet_retries,
        threads=args.threads,
    )
    return bench_realtime(opts)


def _bench_recycle(model: ModelConfig, args: argparse.Namespace) -> dict:
    from app.bench.recycle_bench import bench_recycle

    return bench_recycle(model, args.source, args.recycle_seconds, args.recycle_every_s)


def _bench_leak(model: ModelConfig, args: argparse.Namespace) -> dict:
    from app.bench.recycle_bench import bench_recycle

    return bench_recycle(model, args.source, 90, 0, leak_mb=2.0)


def _bench_deploy(model: ModelConfig, args: argparse.Namespace) -> dict:
    from app.bench.deploy_bench import bench_deploy

    return bench_deploy(model, args.source, args.deploy_count)


def _bench_engine(model: ModelConfig, args: argparse.Namespace) -> dict:
    from app.bench.engine_bench import bench_engine

    return bench_engine(model, args.source, read_frames(args.source, args.frames), args.live_seconds)


def _bench_int8(model: ModelConfig, args: argparse.Namespace) -> dict:
    from app.bench.int8_bench import bench_int8

    return bench_int8(model, args.source)


def _bench_preview(model: ModelConfig, args: argparse.Namespace) -> dict:
    from app.bench.preview_bench import bench_preview

    return bench_preview(model, args.source, args.preview_seconds, args.preview_rounds)


def _bench_mqtt_rate(model: ModelConfig, args: argparse.Namespace) -> dict:
    from app.bench.mqtt_bench import bench_mqtt_rate

    return bench_mqtt_rate(args.mqtt_seconds)


def _bench_mqtt_cost(model: ModelConfig, args: argparse.Namespace) -> dict:
    from app.bench.mqtt_bench import bench_mqtt_cost

    return bench_mqtt_cost(model, args.source, args.mqtt_seconds, args.rounds)


def _bench_api(model: ModelConfig, args: argparse.Namespace) -> dict:
    from app.bench.api_bench import bench_api

    return bench_api(model, args.source, args.api_seconds)


def _bench_api_ws(model: ModelConfig, args: argparse.Namespace) -> dict:
    from app.bench.api_bench import bench_ws

    return bench_ws(model, args.source, args.ws_seconds)


def _bench_batch(model: ModelConfig, args: argparse.Namespace) -> dict:
    from app.bench.regions_bench import bench_batch

    return bench_batch(model, args.source, args.batch_repeats)


def _bench_small(model: ModelConfig, args: argparse.Namespace) -> dict:
    from app.bench.regions_bench import bench_small

    return bench_small(model, args.source, args.small_frames)


def _bench_static(model: ModelConfig, args: argparse.Namespace) -> dict:
    from app.bench.scheduling_bench import bench_static

    return bench_static(model, args.source, args.static_seconds, args.static_idle_interval)


def _bench_capacity(model: ModelConfig, args: argparse.Namespace) -> dict:
    from app.bench.scheduling_bench import bench_capacity

    return bench_capacity(model, args.source, args.capacity_seconds, args.capacity_cameras,
                          parse_counts(args.capacity_sweep))  # fmt: skip


def parse_counts(text: str) -> tuple[int, ...]:
    """`"4,6,8"` -> (4, 6, 8); empty -> ().

    Raises:
        BenchError: Something that is not a comma list of integers.
    """
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise BenchError(f"--capacity-sweep: {text!r} is not a comma list of camera counts") from exc


Mode = Callable[[ModelConfig, argparse.Namespace], dict]
"""A mode run once: the model config and the `vigil bench` options in, its JSON-able result out."""

RunnerFactory = Callable[[ModelConfig, str, int], Runner | None]
"""A mode timed in rounds: (model, source, frames per round) -> the round to repeat, or None to skip it."""

ROUND_MODES: dict[str, RunnerFactory] = {
    "backend": backend_runner,
    "ultralytics": ultralytics_runner,
    "detect": detect_runner,
}
"""The modes timed in interleaved rounds on the same frames, after the others (so that drift of a noisy machine
hits every one of them alike)."""

MODES: dict[str, Mode] = {
    "realtime": _bench_realtime,
    "live": lambda model, args: bench_live(model, args.source, args.live_seconds),
    "soak": lambda model, args: bench_soak(model, args.source, args.soak_frames),
    "recycle": _bench_recycle,
    "leak": _bench_leak,
    "deploy": _bench_deploy,
    "engine": _bench_engine,
    "int8": _bench_int8,
    "preview": _bench_preview,
    "mqtt-rate": _bench_mqtt_rate,
    "mqtt-cost": _bench_mqtt_cost,
    "api": _bench_api,
    "api-ws": _bench_api_ws,
    "batch": _bench_batch,
    "small": _bench_small,
    "static": _bench_static,
    "capacity": _bench_capacity,
}
"""The modes run once each, in this order, before the round modes: the pipeline modes first, in a process that
has loaded nothing else (main-process RSS is real)."""

MODE_NAMES = (*ROUND_MODES, *MODES)
"""Every mode `--modes` accepts."""


def _check_args(args: argparse.Namespace, modes: list[str]) -> None:
    """Refuse what the bench cannot run before running anything (raises BenchError)."""
    unknown = set(modes) - set(MODE_NAMES)
    if unknown:
        raise BenchError(f"unknown mode(s) {sorted(unknown)}; choose from {MODE_NAMES}")
    for p in (args.model, args.source):
        if not Path(p).is_file():
            raise BenchError(f"{p} does not exist (run `vigil assets fetch`)")
    if "capacity" in modes:
        parse_counts(args.capacity_sweep)
    if "realtime" in modes:
        from app.bench.realtime_bench import parse_decode_sweep, parse_sweep

        if not Path(args.config).is_file():
            raise BenchError(f"config {args.config} does not exist")
        try:
            parse_sweep(args.sweep)
            parse_decode_sweep(args.decode_sweep)
            if not [int(s) for s in args.realtime_sizes.split(",") if s.strip()]:
                raise ValueError("--realtime-sizes is empty")
        except ValueError as exc:
            raise BenchError(str(exc)) from exc


def run_bench(args: argparse.Namespace) -> dict:
    """Run the `--modes` of `vigil bench` (options as `app.cli.bench` parses them).

    Prints the results (a table, or JSON with `--json`), writes the `--markdown` section, and returns the
    results.

    Raises:
        BenchError: an unknown mode, a missing model, source or config, a bad sweep, an unreadable source.
    """
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    _check_args(args, modes)
    threads = 0 if args.threads is None else args.threads
    model = ModelConfig(path=args.model, threads=threads, backend=args.backend, precision=args.precision,
                        engine_dir=args.engine_dir)  # fmt: skip
    results: dict = {"machine": machine_info(), "model": args.model, "source": args.source, "modes": {}}
    for name, mode in MODES.items():
        if name in modes:
            results["modes"][name] = _announce(name, mode(model, args))
    candidates = {m: factory(model, args.source, args.frames) for m, factory in ROUND_MODES.items() if m in modes}
    runners = {m: r for m, r in candidates.items() if r is not None}
    rounds: dict[str, list] = {m: [] for m in runners}
    for i in range(args.rounds):  # interleaved, so drift of a noisy machine hits every mode alike
        for m, run in runners.items():
            rounds[m].append(run())
            print(f"bench: round {i + 1}/{args.rounds} {m}: {rounds[m][-1][2] / rounds[m][-1][1]:.3f} fps",
                  file=sys.stderr)  # fmt: skip
    for m, r in rounds.items():
        results["modes"][m] = _announce(m, _summary(r))
    results["ratios"] = _ratios(results["modes"])
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        _print_table(results)
    if args.markdown:
        write_markdown(Path(args.markdown), results)
        print(f"bench: wrote {args.markdown}", file=sys.stderr)
    return results


def _announce(mode: str, res: dict) -> dict:
    print(f"bench: {mode}: {json.dumps(res)}", file=sys.stderr)
    return res


def _ratios(modes: dict) -> dict:
    def fps(m: str) -> float | None:
        return modes.get(m, {}).get("fps")

    detect, backend, ultralytics = fps("detect"), fps("backend"), fps("ultralytics")
    out = {}
    if detect and backend:
        out["detect_vs_backend"] = round(detect / backend, 3)
    if detect and ultralytics:
        out["detect_vs_ultralytics"] = round(detect / ultralytics, 3)
    if ultralytics and backend:
        out["ultralytics_vs_backend"] = round(ultralytics / backend, 3)
    return out


def _print_table(results: dict) -> None:
    print(f"{'mode':<12} {'fps':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}")
    for m, r in results["modes"].items():
        if "latency_ms" in r:
            lat = r["latency_ms"]
            print(f"{m:<12} {r['fps']:>8.2f} {lat['p50']:>8.1f} {lat['p95']:>8.1f} {lat['p99']:>8.1f}")
    live = results["modes"].get("live")
    if live:
        age = live["frame_age_ms"]
        print(
            f"live: {live['processed_fps']} fps processed of {live['camera_fps']} fps, "
            f"dropped {live['frames_dropped']}, "
            f"frame age p50 {age['p50']} / p99 {age['p99']} ms (bound {live['bound_ms']} ms)"
        )
    soak = results["modes"].get("soak")
    if soak:
        print(f"soak: {json.dumps(soak)}")
    rt = results["modes"].get("realtime")
    if rt:
        for size, r in rt["sizes"].items():
            age = r["frame_age_ms"]
            print(
                f"realtime {size}: {r['processed_fps']} fps processed (goal {r['fps_goal']}), backend "
                f"{r['backend_fps']} fps, live/limit {r['throughput_ratio']}x, frame age p50 {age['p50']} / "
                f"p99 {age['p99']} ms (bound {r['bound_ms']} ms: {'met' if r['within_bound'] else 'NOT met'})"
            )
        for row in rt.get("sweep", {}).get("rows", []):
            print(f"realtime sweep threads {row['threads']} spin {'on' if row['spin_wait'] else 'off'}: "
                  f"live {row['processed_fps']} fps, backend {row['backend_fps']} fps")  # fmt: skip
        for row in rt.get("sweep", {}).get("decode_rows", []):
            print(f"realtime sweep file decode {row['file_decode']}: live {row['processed_fps']} fps")
    for line in _regions_lines(results):
        print(line)
    for k, v in results["ratios"].items():
        print(f"{k}: {v}x")


def _regions_lines(results: dict) -> list[str]:
    from app.bench.regions_bench import render_regions

    return [line for line in render_regions(results) if line and not line.startswith("|---")]
