"""`vigil bench --modes realtime`: is the default config real time on this machine's CPU?

The live pipeline runs with the default config's semantics (configs/default.yaml through load_config; the
bench turns off only MQTT, HTTP and JSON lines, and sets the model size and the run length) on its sample
video paced at the file's native rate, at each size of `--realtime-sizes`; the bare backend loop of the same
model at the same size runs in the same rounds, interleaved, so both see the same machine drift. Reported
per size (medians of rounds): processed fps, frame age at result p50/p99 against the bound
2 x median inference + one frame interval, and throughput against the limit min(camera fps, backend fps).

Where the time goes, per processed frame (medians): the wait for the worker (capture -> picked), letterbox,
inference, decode/NMS, the rest of the worker's turn, IPC (worker done -> main process), plus the CPU that
the main process (capture decode, ring writes, event loop) and the worker take, and the capture decode
cost of the source measured alone (AvSource, and raw PyAV with each decoder threading).

A small sweep (live processed fps and backend fps for ONNX Runtime intra-op threads x spin_wait) backs the
model.threads / model.spin_wait of configs/default.yaml.
"""

from __future__ import annotations

import contextlib
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import psutil

from app.bench.common import run_to_end
from app.config import ModelConfig, VigilConfig, load_config
from app.pipeline.records import ResultRecord
from app.pipeline.service import ServiceBase

log = logging.getLogger(__name__)

DEFAULT_CONFIG = "configs/default.yaml"
# The goals (2-core CPU, sample video at 25 fps): processed fps per size, and live >= 0.8 x limit.
FPS_GOALS = {416: 15.0, 320: 22.0}
THROUGHPUT_GOAL = 0.8
DEFAULT_SWEEP = "0:on,0:off,1:on,1:off,2:on,2:off"  # threads:spin_wait
DECODE_VARIANTS = (("AUTO", 0), ("SLICE", 0), ("FRAME", 0), ("NONE", 1))  # PyAV thread_type, thread_count
DEFAULT_DECODE_SWEEP = "AUTO,SLICE,NONE:1"  # file decoder threading tried in the live pipeline


@dataclass
class RealtimeOptions:
    """What `vigil bench --modes realtime` runs (the CLI's flags); times in seconds."""

    config: str = DEFAULT_CONFIG
    model: str | None = None  # replaces the config's model.path
    source: str | None = None  # replaces the first camera's source
    sizes: tuple[int, ...] = (416, 320)
    seconds: float = 20.0  # measured window of each live run (after warm-up)
    warmup_s: float = 2.0  # results discarded after the first one (ORT's first runs, page faults)
    rounds: int = 3
    backend_frames: int = 60
    sweep: tuple[tuple[int, bool], ...] = ()
    sweep_seconds: float = 10.0
    sweep_rounds: int = 2
    decode_sweep: tuple[tuple[str, int], ...] = ()  # (thread_type, thread_count) of file decoding, live
    quiet_wait_s: float = 0.0  # > 0: before each measurement wait (at most this long) for a quiet machine,
    quiet_retries: int = 2  # and repeat a measurement during which other processes took a share of the CPU
    threads: int | None = None  # model.threads override (None: the config's)
    spin_wait: bool | None = None  # model.spin_wait override (None: the config's)


def parse_sweep(text: str) -> tuple[tuple[int, bool], ...]:
    """'0:on,1:off' -> ((0, True), (1, False))."""
    out = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        threads, _, spin = item.partition(":")
        if spin not in ("on", "off") or not threads.isdigit():
            raise ValueError(f"sweep item {item!r}: expected THREADS:on|off, e.g. 1:off")
        out.append((int(threads), spin == "on"))
    return tuple(out)


def parse_decode_sweep(text: str) -> tuple[tuple[str, int], ...]:
    """'AUTO,NONE:1' -> (('AUTO', 0), ('NONE', 1))."""
    out = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        kind, _, count = item.partition(":")
        if kind.upper() not in ("AUTO", "SLICE", "FRAME", "NONE") or (count and not count.isdigit()):
            raise ValueError(f"decode sweep item {item!r}: expected AUTO|SLICE|FRAME|NONE[:THREADS], e.g. NONE:1")
        out.append((kind.upper(), int(count or 0)))
    return tuple(out)


@contextlib.contextmanager
def file_decode_threading(setting: tuple[str, int]) -> Iterator[None]:
    """Decode files with this threading meanwhile (the capture thread runs in this process)."""
    from app.capture import ffmpeg

    before = ffmpeg.FILE_DECODE_THREADING
    ffmpeg.FILE_DECODE_THREADING = setting
    try:
        yield
    finally:
        ffmpeg.FILE_DECODE_THREADING = before


def _decode_label(setting: tuple[str, int]) -> str:
    return setting[0] + (f" x{setting[1]}" if setting[1] else "")


def realtime_config(
    opts: RealtimeOptions, imgsz: int, threads: int | None = None, spin_wait: bool | None = None
) -> VigilConfig:
    """The default config as `vigil run` loads it, with only what the bench needs overridden."""
    overrides = [
        "mqtt.enabled=false",
        "http.enabled=false",
        "output.json_lines=false",
        "output.status_interval_s=0",
        f"model.imgsz={imgsz}",
    ]
    threads = opts.threads if threads is None else threads
    spin_wait = opts.spin_wait if spin_wait is None else spin_wait
    if threads is not None:
        overrides.append(f"model.threads={threads}")
    if spin_wait is not None:
        overrides.append(f"model.spin_wait={'true' if spin_wait else 'false'}")
    cfg = load_config(opts.config, overrides)
    cfg.cameras = cfg.cameras[:1]  # one camera
    if opts.source is not None:
        cfg.cameras[0].source = opts.source
    if opts.model is not None:
        cfg.model.path = opts.model
    return cfg


def camera_fps(cfg: VigilConfig) -> float:
    """The rate the capture loop paces the camera at: camera.fps, else the file's own (PyAV), else 25."""
    cam = cfg.cameras[0]
    if cam.fps:
        return float(cam.fps)
    try:
        import av

        with av.open(str(cam.source)) as c:
            s = c.streams.video[0]
            rate = s.average_rate or s.guessed_rate
            if rate and 0 < float(rate) < 1000:
                return float(rate)
    except Exception:  # not a file PyAV opens (a device, a stream): assume a 25 fps camera
        pass
    return 25.0


# ---- the live pipeline, one measured window ----------------------------------------------------------


def _cpu_s(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def _busy_s() -> float:
    """CPU seconds the whole machine has been busy (every process, interrupts, steal)."""
    t = psutil.cpu_times()
    return sum(getattr(t, k, 0.0) for k in ("user", "nice", "system", "irq", "softirq", "steal"))


def _thread_cpu_s(native_id: int | None) -> float | None:
    if native_id is None:
        return None
    for t in psutil.Process().threads():
        if t.id == native_id:
            return t.user_time + t.system_time
    return None


class _Window(ServiceBase):
    """A service that skips the warm-up, keeps per-result samples for `seconds`, then stops the pipeline.

    At the window's edges it reads the capture counter and the CPU time of the main process, the capture
    thread and the worker.
    """

    def __init__(self, warmup_s: float, seconds: float) -> None:
        self.warmup_s, self.seconds = warmup_s, seconds
        self.pipe: Any = None  # the LivePipeline it measures and stops (set before the run starts)
        self.first: float | None = None
        self.window_start: float | None = None
        self.end: float | None = None
        self.samples: list[tuple[float, ...]] = []
        self.dropped = 0
        self._edges: list[dict] = []

    def _mark(self, now: float) -> None:
        pipe = self.pipe
        name = next(iter(pipe.captures))
        cap = pipe.captures[name]
        edge = {"t": now, "frames": cap.counters.frames, "main": _cpu_s(psutil.Process()),
                "capture": _thread_cpu_s(cap.native_id), "worker": None, "busy": _busy_s()}  # fmt: skip
        if pipe.worker_info is not None:
            with contextlib.suppress(psutil.Error):
                edge["worker"] = _cpu_s(psutil.Process(pipe.worker_info.pid))
        self._edges.append(edge)

    def on_result(self, record: ResultRecord) -> None:
        r = record.result
        now = time.monotonic()
        if self.end is not None:
            return
        if self.first is None:
            self.first = now
        if self.window_start is None:
            if now - self.first >= self.warmup_s:
                self.window_start = now
                self._mark(now)
            return
        lat = record.latency_ms()
        received_ns = r.frame.captured_mono_ns + lat["frame_age"] * 1e6
        turn = (r.done_mono_ns - r.picked_mono_ns) / 1e6
        stages = lat["preprocess"] + lat["inference"] + lat["postprocess"]
        self.samples.append(
            (lat["queue"], lat["preprocess"], lat["inference"], lat["postprocess"], turn - stages,
             (received_ns - r.done_mono_ns) / 1e6, lat["frame_age"])
        )  # fmt: skip
        self.dropped += record.dropped_before
        if now - self.window_start >= self.seconds:
            self.end = now
            self._mark(now)
            self.pipe.request_stop("bench window done")

    def summary(self) -> dict:
        if self.end is None or not self.samples:
            return {"processed_fps": 0.0, "frames": len(self.samples), "error": "no complete window"}
        a, b = self._edges
        dt = b["t"] - a["t"]
        cols = np.asarray(self.samples, float)

        def pct(key: str) -> float | None:
            return None if a[key] is None or b[key] is None else round((b[key] - a[key]) / dt * 100, 1)

        # Everything else on the machine meanwhile (other processes, steal): 0 on a quiet machine.
        busy, main, worker = pct("busy"), pct("main"), pct("worker")
        other = round(max(0.0, busy - main - (worker or 0.0)), 1) if busy is not None and main is not None else None
        names = ("queue", "preprocess", "inference", "postprocess", "worker_other", "ipc", "frame_age")
        return {
            "seconds": round(dt, 2),
            "frames": len(self.samples),
            "processed_fps": round(len(self.samples) / dt, 3),
            "captured_fps": round((b["frames"] - a["frames"]) / dt, 3),
            "dropped": self.dropped,
            "stages_ms": {n: _pcts(cols[:, i]) for i, n in enumerate(names)},
            "ages_ms": [round(float(v), 2) for v in cols[:, 6]],
            "inference_ms": [round(float(v), 2) for v in cols[:, 2]],
            "cpu_pct": {"main": pct("main"), "capture_thread": pct("capture"), "worker": pct("worker"), "other": other},
        }


def _pcts(values: np.ndarray) -> dict[str, float]:
    return {"p50": round(float(np.percentile(values, 50)), 2), "p99": round(float(np.percentile(values, 99)), 2)}


def live_window(cfg: VigilConfig, seconds: float, warmup_s: float) -> dict:
    """Run the live pipeline until `seconds` of steady-state results (after `warmup_s`) are in."""
    from app.pipeline.live import LivePipeline

    window = _Window(warmup_s, seconds)
    # The safety stop only matters when results never come (a broken model): the window stops the run.
    pipe = LivePipeline(cfg, [window], duration_s=cfg.worker.ready_timeout_s + warmup_s + seconds + 10)
    window.pipe = pipe
    summary = run_to_end(pipe)
    out = window.summary()
    out["worker_restarts"] = summary.worker_restarts
    return out


# ---- the bare backend, same model and size ------------------------------------------------------------


def backend_round(model: ModelConfig, frames: list[np.ndarray], n: int) -> dict:
    """Measure the limit: the backend alone on tensors letterboxed beforehand.

    The model is loaded per round and closed after, so no idle ONNX Runtime thread pool sits in the bench
    process while the live pipeline runs.
    """
    from app.inference.detector import Detector

    det = Detector.from_config(model)
    try:
        tensors = [det.preprocess(f)[0] for f in frames]
        det.warmup(2)
        lat = []
        me = psutil.Process()
        busy0, own0 = _busy_s(), _cpu_s(me)
        t0 = last = time.perf_counter()
        for i in range(n):
            det.backend.infer(tensors[i % len(tensors)])
            now = time.perf_counter()
            lat.append((now - last) * 1000)
            last = now
        wall = time.perf_counter() - t0
        other = max(0.0, (_busy_s() - busy0) - (_cpu_s(me) - own0)) / wall * 100
    finally:
        det.close()
    return {"fps": n / wall, "ms_p50": statistics.median(lat), "other_cpu_pct": round(other, 1)}


# ---- capture decode alone -----------------------------------------------------------------------------


def decode_cost(cfg: VigilConfig, frames: int = 250) -> dict:
    """Measure capture decode per frame with nothing else running.

    First AvSource as the capture loop opens it, then raw PyAV with each decoder threading (same bgr24
    conversion). CPU ms is the process's CPU time (all decoder threads) per frame: what decode takes from
    the cores the detector shares.
    """
    from app.capture.ffmpeg import AvSource, fit_size

    cam = cfg.cameras[0]
    if not Path(str(cam.source)).is_file():
        return {"skipped": "the source is not a file"}
    bound = (cam.max_width, cam.max_height)
    out: dict = {}
    src = AvSource(str(cam.source), kind="file", is_live=False)
    src.fit_within = bound
    src.open()
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    while n < frames:
        if src.read() is None:
            src.open()  # loop short files, as the camera config does
            continue
        n += 1
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    src.close()
    out["avsource"] = {"frames": n, "wall_ms": round(wall * 1000 / n, 3), "cpu_ms": round(cpu * 1000 / n, 3)}
    import av

    variants = {}
    for thread_type, count in DECODE_VARIANTS:
        n, wall, cpu = 0, 0.0, 0.0
        while n < frames:
            with av.open(str(cam.source)) as c:
                s = c.streams.video[0]
                s.thread_type = thread_type
                if count:
                    s.codec_context.thread_count = count
                t0, c0 = time.perf_counter(), time.process_time()
                for f in c.decode(s):
                    size = fit_size((f.width, f.height), bound)
                    if size != (f.width, f.height):
                        f.to_ndarray(format="bgr24", width=size[0], height=size[1], interpolation="AREA")
                    else:
                        f.to_ndarray(format="bgr24")
                    n += 1
                    if n >= frames:
                        break
                wall += time.perf_counter() - t0
                cpu += time.process_time() - c0
        per_frame = {"wall_ms": round(wall * 1000 / n, 3), "cpu_ms": round(cpu * 1000 / n, 3)}
        variants[_decode_label((thread_type, count))] = per_frame
    out["variants"] = variants
    return out


# ---- a shared machine --------------------------------------------------------------------------------

# CPU (% of one core) that other processes may take during a measurement before it counts as disturbed.
QUIET_OTHER_PCT = 15.0


def other_cpu_pct(seconds: float = 1.0) -> float:
    """What the rest of the machine uses (% of one core) over `seconds`, this process and its children aside."""
    me = psutil.Process()

    def own() -> float:
        total = _cpu_s(me)
        for child in me.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += _cpu_s(child)
        return total

    b0, o0, t0 = _busy_s(), own(), time.monotonic()
    time.sleep(seconds)
    return max(0.0, (_busy_s() - b0) - (own() - o0)) / (time.monotonic() - t0) * 100


def wait_quiet(max_s: float) -> float:
    """Wait until other processes use under QUIET_OTHER_PCT for 2 s in a row (or `max_s` passed).

    Returns:
        The seconds waited, to 0.1 s.
    """
    t0 = time.monotonic()
    quiet, said = 0, False
    while time.monotonic() - t0 < max_s:
        quiet = quiet + 1 if other_cpu_pct(1.0) < QUIET_OTHER_PCT else 0
        if quiet >= 2:
            break
        if not said and time.monotonic() - t0 > 5:
            _say(f"other processes are using the CPU; waiting up to {max_s:.0f} s for a quiet machine")
            said = True
    return round(time.monotonic() - t0, 1)


def _other(res: dict) -> float | None:
    return res["cpu_pct"]["other"] if "cpu_pct" in res else res.get("other_cpu_pct")


def measured(opts: RealtimeOptions, what: str, fn: Callable[..., dict], *args: Any) -> dict:
    """Run `fn(*args)` on a quiet machine when --quiet-wait is on.

    It waits first, and repeats a disturbed measurement (other processes above QUIET_OTHER_PCT meanwhile) up
    to quiet_retries times, keeping the last.

    Returns:
        ``fn``'s result with ``disturbed``, ``attempts`` and ``quiet_wait_s`` added.
    """
    waited = 0.0
    attempts = 1 + (opts.quiet_retries if opts.quiet_wait_s > 0 else 0)
    for attempt in range(attempts):
        if opts.quiet_wait_s > 0:
            waited += wait_quiet(opts.quiet_wait_s)
        res = fn(*args)
        other = _other(res)
        res["disturbed"] = other is not None and other >= QUIET_OTHER_PCT
        res["attempts"], res["quiet_wait_s"] = attempt + 1, waited
        if not res["disturbed"] or attempt + 1 == attempts:
            break
        _say(f"{what}: other processes took {other:.0f}% of a core meanwhile; measuring again")
    return res


# ---- the mode -----------------------------------------------------------------------------------------


def _med(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 3) if present else None


def _merge_live(runs: list[dict]) -> dict:
    """Medians over rounds; frame-age and inference percentiles over every frame of every round."""
    ok = [r for r in runs if r.get("frames")]
    ages = [v for r in ok for v in r["ages_ms"]]
    inf = [v for r in ok for v in r["inference_ms"]]
    stage_names = ok[0]["stages_ms"].keys() if ok else ()
    # The goal is about the appliance running alone: the bound is judged on the rounds no other process
    # disturbed, when there are any (the all-rounds figures stay beside it).
    clean = [r for r in ok if not r.get("disturbed")]
    quiet = clean or ok
    q_ages = [v for r in quiet for v in r["ages_ms"]]
    q_inf = [v for r in quiet for v in r["inference_ms"]]
    return {
        "processed_fps": _med([r["processed_fps"] for r in runs]),
        "processed_fps_rounds": [round(r["processed_fps"], 2) for r in runs],
        "captured_fps": _med([r.get("captured_fps") for r in ok]),
        "frames": sum(r["frames"] for r in runs),
        "dropped": sum(r.get("dropped", 0) for r in runs),
        "frame_age_ms": {
            "p50": round(float(np.percentile(ages, 50)), 2) if ages else None,
            "p99": round(float(np.percentile(ages, 99)), 2) if ages else None,
        },
        "inference_ms_p50": round(statistics.median(inf), 2) if inf else None,
        "undisturbed_rounds": len(clean),
        "frame_age_ms_undisturbed": {
            "p50": round(float(np.percentile(q_ages, 50)), 2) if q_ages else None,
            "p99": round(float(np.percentile(q_ages, 99)), 2) if q_ages else None,
        },
        "inference_ms_p50_undisturbed": round(statistics.median(q_inf), 2) if q_inf else None,
        "stages_ms_p50": {n: _med([r["stages_ms"][n]["p50"] for r in ok]) for n in stage_names},
        "stages_ms_p99": {n: _med([r["stages_ms"][n]["p99"] for r in ok]) for n in stage_names},
        "cpu_pct": {k: _med([r["cpu_pct"][k] for r in ok]) for k in ("main", "capture_thread", "worker", "other")},
        "other_cpu_pct_rounds": [r["cpu_pct"]["other"] if "cpu_pct" in r else None for r in runs],
        "disturbed_rounds": sum(bool(r.get("disturbed")) for r in runs),
        "worker_restarts": sum(r.get("worker_restarts", 0) for r in runs),
    }


def _say(msg: str) -> None:
    print(f"bench: realtime: {msg}", file=sys.stderr, flush=True)


def bench_realtime(opts: RealtimeOptions) -> dict:
    """Run the realtime mode: decode cost, then interleaved live and bare-backend rounds per size, then sweeps.

    Returns:
        The report: per size the processed fps against the limit (the slower of camera and bare backend),
        frame age percentiles (ms) against the bound, stage times and CPU shares; and the goals.
    """
    from app.bench.common import read_frames

    base = realtime_config(opts, opts.sizes[0])
    cam_fps = camera_fps(base)
    frames = read_frames(str(base.cameras[0].source), min(opts.backend_frames, 30))
    out: dict = {
        "config": opts.config,
        "model": base.model.path,
        "source": str(base.cameras[0].source),
        "camera_fps": round(cam_fps, 3),
        "threads": base.model.threads,
        "spin_wait": base.model.spin_wait,
        "rounds": opts.rounds,
        "seconds_per_round": opts.seconds,
        "warmup_s": opts.warmup_s,
        "quiet_wait_s": opts.quiet_wait_s,
        "quiet_other_pct": QUIET_OTHER_PCT,
        "backend_frames_per_round": opts.backend_frames,
    }
    out["loadavg_start"] = [round(v, 2) for v in os.getloadavg()]
    _say(f"load average {out['loadavg_start']}; capture decode alone")
    out["decode"] = decode_cost(base)
    _say(f"decode: {out['decode']}")
    live: dict[int, list[dict]] = {s: [] for s in opts.sizes}
    bare: dict[int, list[dict]] = {s: [] for s in opts.sizes}
    for i in range(opts.rounds):  # interleaved: every size and the backend see the same drift
        for size in opts.sizes:
            cfg = realtime_config(opts, size)
            what = f"round {i + 1} imgsz {size}"
            live[size].append(measured(opts, f"{what} live", live_window, cfg, opts.seconds, opts.warmup_s))
            bare[size].append(measured(opts, f"{what} backend", backend_round, cfg.model, frames, opts.backend_frames))
            _say(f"round {i + 1}/{opts.rounds} imgsz {size}: live {live[size][-1]['processed_fps']:.2f} fps "
                 f"(other CPU {_other(live[size][-1])}%), backend {bare[size][-1]['fps']:.2f} fps "
                 f"(other CPU {_other(bare[size][-1])}%)")  # fmt: skip
    bound_frame_ms = 1000.0 / cam_fps
    out["sizes"] = {}
    for size in opts.sizes:
        r = _merge_live(live[size])
        backend_fps = _med([b["fps"] for b in bare[size]])
        backend_ms = _med([b["ms_p50"] for b in bare[size]])
        limit = min(cam_fps, cast(float, backend_fps))  # None only with --rounds 0, which fails here as before
        inf = r["inference_ms_p50_undisturbed"]
        bound = 2 * inf + bound_frame_ms if inf is not None else None
        p99 = r["frame_age_ms_undisturbed"]["p99"]
        goal = FPS_GOALS.get(size)
        ratio = round(r["processed_fps"] / limit, 3) if limit else None
        r.update(
            {
                "backend_fps": backend_fps,
                "backend_fps_rounds": [round(b["fps"], 2) for b in bare[size]],
                "backend_ms_p50": backend_ms,
                "backend_other_cpu_pct": _med([b["other_cpu_pct"] for b in bare[size]]),
                "backend_other_cpu_pct_rounds": [b["other_cpu_pct"] for b in bare[size]],
                "backend_disturbed_rounds": sum(bool(b.get("disturbed")) for b in bare[size]),
                "limit_fps": round(limit, 3),
                "throughput_ratio": ratio,
                "throughput_met": ratio is not None and ratio >= THROUGHPUT_GOAL,
                "fps_goal": goal,
                "fps_met": None if goal is None else r["processed_fps"] >= goal,
                "bound_ms": round(bound, 2) if bound is not None else None,
                "within_bound": bound is not None and p99 is not None and p99 <= bound,
                "inference_live_vs_bare": round(inf / backend_ms, 3) if inf and backend_ms else None,
            }
        )
        out["sizes"][str(size)] = r
    if (opts.sweep or opts.decode_sweep) and opts.sweep_seconds > 0:
        out["sweep"] = bench_sweep(opts, frames)
    out["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    out["goals"] = {"fps": {str(k): v for k, v in FPS_GOALS.items()}, "throughput_ratio": THROUGHPUT_GOAL,
                    "bound": "p99 frame age <= 2 x median inference + one frame interval"}  # fmt: skip
    return out


def bench_sweep(opts: RealtimeOptions, frames: list[np.ndarray]) -> dict:
    """Sweep runtime settings at the first size, interleaved.

    Live processed fps and backend fps for each (threads, spin_wait), and live processed fps for each file
    decoder threading (with the config's threads and spin_wait).
    """
    from app.capture import ffmpeg

    size = opts.sizes[0]
    current = ffmpeg.FILE_DECODE_THREADING
    live: dict[tuple[int, bool], list[dict]] = {k: [] for k in opts.sweep}
    bare: dict[tuple[int, bool], list[dict]] = {k: [] for k in opts.sweep}
    dec: dict[tuple[str, int], list[dict]] = {k: [] for k in opts.decode_sweep}
    for i in range(opts.sweep_rounds):
        for threads, spin in opts.sweep:
            cfg = realtime_config(opts, size, threads=threads, spin_wait=spin)
            what = f"sweep round {i + 1} threads {threads} spin {spin}"
            live[(threads, spin)].append(
                measured(opts, f"{what} live", live_window, cfg, opts.sweep_seconds, opts.warmup_s)
            )
            bare[(threads, spin)].append(
                measured(opts, f"{what} backend", backend_round, cfg.model, frames, opts.backend_frames)
            )
            _say(f"sweep round {i + 1}/{opts.sweep_rounds} threads {threads} spin {'on' if spin else 'off'}: "
                 f"live {live[(threads, spin)][-1]['processed_fps']:.2f} fps "
                 f"(other CPU {_other(live[(threads, spin)][-1])}%), backend {bare[(threads, spin)][-1]['fps']:.2f} "
                 f"fps (other CPU {_other(bare[(threads, spin)][-1])}%)")  # fmt: skip
        for setting in opts.decode_sweep:
            cfg = realtime_config(opts, size)
            with file_decode_threading(setting):
                dec[setting].append(
                    measured(opts, f"sweep round {i + 1} decode {_decode_label(setting)}",
                             live_window, cfg, opts.sweep_seconds, opts.warmup_s)
                )  # fmt: skip
            last = dec[setting][-1]
            _say(f"sweep round {i + 1}/{opts.sweep_rounds} file decode {_decode_label(setting)}: "
                 f"live {last['processed_fps']:.2f} fps (other CPU {_other(last)}%)")  # fmt: skip
    rows = []
    for threads, spin in opts.sweep:
        r = _merge_live(live[(threads, spin)])
        rows.append(
            {
                "threads": threads,
                "spin_wait": spin,
                "processed_fps": r["processed_fps"],
                "processed_fps_rounds": r["processed_fps_rounds"],
                "frame_age_ms_p99": r["frame_age_ms"]["p99"],
                "inference_ms_p50": r["inference_ms_p50"],
                "worker_cpu_pct": r["cpu_pct"]["worker"],
                "other_cpu_pct": r["cpu_pct"]["other"],
                "backend_other_cpu_pct": _med([b["other_cpu_pct"] for b in bare[(threads, spin)]]),
                "disturbed_rounds": r["disturbed_rounds"]
                + sum(bool(b.get("disturbed")) for b in bare[(threads, spin)]),
                "backend_fps": _med([b["fps"] for b in bare[(threads, spin)]]),
                "backend_fps_rounds": [round(b["fps"], 2) for b in bare[(threads, spin)]],
            }
        )
    decode_rows = []
    for setting in opts.decode_sweep:
        r = _merge_live(dec[setting])
        decode_rows.append(
            {
                "file_decode": _decode_label(setting),
                "current": setting == current,
                "processed_fps": r["processed_fps"],
                "processed_fps_rounds": r["processed_fps_rounds"],
                "frame_age_ms_p99": r["frame_age_ms"]["p99"],
                "inference_ms_p50": r["inference_ms_p50"],
                "main_cpu_pct": r["cpu_pct"]["main"],
                "worker_cpu_pct": r["cpu_pct"]["worker"],
                "other_cpu_pct": r["cpu_pct"]["other"],
                "disturbed_rounds": r["disturbed_rounds"],
            }
        )
    return {"imgsz": size, "seconds_per_round": opts.sweep_seconds, "rounds": opts.sweep_rounds, "rows": rows,
            "decode_rows": decode_rows}  # fmt: skip
