"""The per-camera latency budget: p50/p95/p99 of every layer over a sliding window, against targets, with alerts.

Layers of one frame (monotonic instants, see `layer_ms`):

    captured --capture--> written to the ring --queue--> picked by the worker --preprocess/inference/postprocess-->
    done --ipc--> received by the main process --publish--> handed to every service;   total = captured -> published

Targets come from `budget` (and `cameras[].budget`); the layers left out are derived: on a GPU backend from the
33 ms frame budget (`GPU_TARGETS_MS`), on the CPU from the model time measured over the first window after a worker
became ready (state `learning` until then). An alert needs a whole window over `alert_factor` x target, and its
recovery a whole window back under `RECOVER_FRACTION` of that limit: at most one event per state change.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np

from app.config import LATENCY_LAYERS, BudgetConfig, VigilConfig
from app.pipeline.records import ResultRecord, SystemEvent

if TYPE_CHECKING:
    from app.inference.protocol import WorkerReady
    from app.pipeline.stats import CameraStats

log = logging.getLogger(__name__)

KEYS: tuple[str, ...] = (*LATENCY_LAYERS, "total")  # the latency figures watched; `error_rate` is apart
FRAME_BUDGET_MS = 33.0  # one frame at 30 fps
GPU_TARGETS_MS: Mapping[str, float] = {
    "capture": 2.0, "queue": 8.0, "preprocess": 3.0, "inference": 14.0, "postprocess": 3.0, "ipc": 1.0, "publish": 2.0,
    "total": FRAME_BUDGET_MS,
}  # fmt: skip
CPU_FIXED_MS: Mapping[str, float] = {"capture": 5.0, "ipc": 2.0, "publish": 5.0}
MIN_SAMPLES = 10  # a window with fewer results decides nothing
MIN_ERROR_FRAMES = 20  # nor does an error rate over fewer frames
RECOVER_FRACTION = 0.8  # back under 0.8 x the limit (hysteresis) to recover
ERROR_RECOVER_FRACTION = 0.5  # the error rate back under half its maximum
MAX_ROWS = 16_384  # samples kept per camera at most (30 s at 500 results/s): memory stays bounded
HISTORY_POINTS = 120  # 10 min of 5 s points
HISTORY_STEP_S = 5.0

# Row columns: t (monotonic s), then the KEYS in order, then frame_age (capture -> receipt), all ms.
_COL = {k: i + 1 for i, k in enumerate(KEYS)}
_AGE = len(KEYS) + 1

State = Literal["ok", "exceeded"]


def layer_ms(record: ResultRecord, published_mono_ns: int) -> tuple[float, ...]:
    """One frame's layer durations, ms, in `KEYS` order (`capture` is 0 for a frame that did not come from a ring).

    Args:
        record: The published result (its `FrameMeta` instants, stage timings, pick/done/receipt instants).
        published_mono_ns: When every service had it (`time.monotonic_ns()`).
    """
    r = record.result
    meta = r.frame
    written = meta.written_mono_ns or meta.captured_mono_ns
    t = r.timings
    return (
        (written - meta.captured_mono_ns) / 1e6,
        (r.picked_mono_ns - written) / 1e6,
        t.preprocess_ms,
        t.inference_ms,
        t.postprocess_ms,
        (record.received_mono_ns - r.done_mono_ns) / 1e6,
        (published_mono_ns - record.received_mono_ns) / 1e6,
        (published_mono_ns - meta.captured_mono_ns) / 1e6,
    )


def derive_targets(
    cfg: BudgetConfig,
    backend: str | None,
    learned: Mapping[str, tuple[float, float]] | None,
    cameras_active: int = 1,
    frame_interval_ms: float = FRAME_BUDGET_MS,
) -> dict[str, float] | None:
    """The p99 target of every layer and of `total`, ms: configured values win, the rest are derived.

    Args:
        cfg: The camera's effective budget (`budget` merged with `cameras[].budget`).
        backend: `gpu`, `cpu`, or None while no worker has reported.
        learned: Per key (median, p99) in ms over the learning window; needed on the CPU, ignored on a GPU.
        cameras_active: Cameras sharing the worker (each waits for the others' inferences in `queue`).
        frame_interval_ms: The camera's frame interval, ms (a frame may wait one interval in `queue`).

    Returns:
        Key -> target ms, or None when a target must be derived but cannot be yet (unknown backend, not learned).
    """
    configured: dict[str, float] = {str(k): v for k, v in cfg.layers_ms.items()}
    if cfg.total_ms is not None:
        configured["total"] = cfg.total_ms
    if all(k in configured for k in KEYS):
        return configured
    if backend == "gpu":
        return {k: configured.get(k, GPU_TARGETS_MS[k]) for k in KEYS}
    if backend is None or learned is None:
        return None
    m = max(learned["inference"][0], 0.1)
    formula = {
        **CPU_FIXED_MS,
        "inference": m,
        "preprocess": max(2.0, 0.15 * m),
        "postprocess": max(2.0, 0.15 * m),
        "queue": max(1, cameras_active) * m + frame_interval_ms,
    }
    # The p99 measured while learning is a floor: a loaded CPU box's normal tail is not a fault.
    out: dict[str, float] = {k: configured.get(k, max(formula[k], learned[k][1])) for k in LATENCY_LAYERS}
    out["total"] = configured.get("total", max(sum(out.values()), learned["total"][1]))
    return out


@dataclass
class _Alert:
    """One watched figure's alert state, which changes only after the condition for it held a whole window.

    Attributes:
        state: `ok` or `exceeded`.
        pending: Since when (monotonic s) the condition for the other state has held without a break; None: not.
    """

    state: State = "ok"
    pending: float | None = None

    def update(self, wants_change: bool | None, now: float, window_s: float) -> bool:
        """Feed this check's verdict; True when the state flips now (at most once per whole window).

        Args:
            wants_change: Whether the figure is in the other state's range now; None when the window holds too
                little to tell (which breaks a pending change, like False).
            now: Monotonic s.
            window_s: How long the condition must hold.
        """
        if not wants_change:
            self.pending = None
            return False
        if self.pending is None:
            self.pending = now
        if now - self.pending < window_s:
            return False
        self.state = "ok" if self.state == "exceeded" else "exceeded"
        self.pending = None
        return True


@dataclass
class _Camera:
    """What the monitor keeps per camera: samples, errors, targets, alert states, history."""

    cfg: BudgetConfig
    rows: deque[tuple[float, ...]] = field(default_factory=lambda: deque(maxlen=MAX_ROWS))
    errors: deque[tuple[float, int, int]] = field(default_factory=deque)  # (t, errors, frames the worker took)
    corrupt_seen: int | None = None
    learn_from: float | None = None  # learning window start (monotonic s); None: not learning
    learned: dict[str, tuple[float, float]] | None = None
    targets: dict[str, float] | None = None
    alerts: dict[str, _Alert] = field(default_factory=dict)
    figures: dict = field(default_factory=dict)  # the last stats entry
    history: deque[dict] = field(default_factory=lambda: deque(maxlen=HISTORY_POINTS))
    next_history: float = 0.0


class BudgetMonitor:
    """Watches every camera's latency layers and error rate against its budget (a `Monitor`).

    Args:
        cfg: The whole config (`budget`, `cameras[].budget`).
        stats: Camera name -> live counters (corrupt frames and the capture rate are read from it).
        history_step_s: Period of the history points behind `/api/budget` (default: 5 s, or `window_s` if
            shorter).
    """

    section = "budget"

    def __init__(
        self, cfg: VigilConfig, stats: Mapping[str, CameraStats], *, history_step_s: float | None = None
    ) -> None:
        self._stats = stats
        self._history_step_s = history_step_s
        self._backend: str | None = None
        self._model_key: tuple | None = None
        self._cams: dict[str, _Camera] = {}
        self._cfg = cfg
        self.reconfigure(cfg)

    # ---- configuration ------------------------------------------------------------------------

    def reconfigure(self, cfg: VigilConfig, now: float | None = None) -> None:
        """Apply a new config: keep samples and learned figures; restart the window of any changed target.

        Cameras added start empty, cameras removed are forgotten (without events); a figure whose target changed
        keeps its state, and a whole window with the new target decides whether it changes.

        Args:
            cfg: The new whole config.
            now: Monotonic s (default `time.monotonic()`).
        """
        now = time.monotonic() if now is None else now
        self._cfg = cfg
        cams: dict[str, _Camera] = {}
        for cam in cfg.cameras:
            eff = cfg.budget.merged(cam.budget)
            c = self._cams.get(cam.name)
            if c is None:
                c = _Camera(eff)
                if self._backend is not None:
                    c.learn_from = now
            else:
                old = c.targets
                c.cfg = eff
                self._retarget(c, now)
                for k, a in c.alerts.items():
                    if k != "error_rate" and (old is None or c.targets is None or old.get(k) != c.targets.get(k)):
                        a.pending = None  # a whole window with the new target decides
                if "error_rate" in c.alerts:
                    c.alerts["error_rate"].pending = None
            cams[cam.name] = c
        self._cams = cams
        for c in cams.values():
            self._retarget(c, now)

    def on_model_ready(self, ready: WorkerReady, now: float | None = None) -> None:
        """A worker serves now: learn its backend; after a model change, derived CPU targets are learned again.

        A recycle of the same model (same file, labels, input size and backend) changes nothing.
        """
        now = time.monotonic() if now is None else now
        b = ready.backend
        backend = "gpu" if "tensorrt" in b.name or any("CUDA" in p or "Tensorrt" in p for p in b.providers) else "cpu"
        sha256 = ready.model.sha256 if ready.model is not None else ""  # new weights with the same labels re-learn
        key = (backend, b.name, tuple(sorted(ready.names.items())), tuple(ready.imgsz), sha256)
        if key == self._model_key:
            return
        self._model_key, self._backend = key, backend
        for c in self._cams.values():
            c.learned = None
            c.learn_from = now
            c.targets = None
            self._retarget(c, now)

    def _retarget(self, c: _Camera, now: float) -> None:
        targets = derive_targets(
            c.cfg, self._backend, c.learned, self._active_cameras(now), self._frame_interval_ms(c, now)
        )
        if targets is not None and c.targets is None:
            for k in KEYS:  # targets just became known: a whole window from now decides (an alert stays raised)
                c.alerts.setdefault(k, _Alert()).pending = None
        c.targets = targets

    def _active_cameras(self, now: float) -> int:
        window = self._cfg.budget.window_s
        return sum(1 for c in self._cams.values() if c.rows and now - c.rows[-1][0] <= window) or 1

    def _frame_interval_ms(self, c: _Camera, now: float) -> float:
        for name, cam in self._cams.items():
            if cam is c and name in self._stats:
                rate = self._stats[name].captured_rate.rate(now)
                return 1000.0 / rate if rate > 0 else FRAME_BUDGET_MS
        return FRAME_BUDGET_MS

    # ---- Monitor --------------------------------------------------------------------------------

    def observe(self, record: ResultRecord, published_mono_ns: int) -> None:
        """Keep one frame's layer times (O(1); old samples leave at `check`)."""
        c = self._cams.get(record.camera)
        if c is None or not c.cfg.enabled:
            return
        c.rows.append((published_mono_ns / 1e9, *layer_ms(record, published_mono_ns), record.frame_age_ms))

    def observe_frame_error(self, camera: str, now: float | None = None) -> None:
        """Count one failed frame of `camera` towards its error rate (`now`: monotonic s, default now)."""
        c = self._cams.get(camera)
        if c is not None and c.cfg.enabled:
            c.errors.append((time.monotonic() if now is None else now, 1, 1))

    def check(self, now_mono: float) -> list[SystemEvent]:
        """Trim the windows, finish learning, update figures and alert states; the events of state changes."""
        events: list[SystemEvent] = []
        for name, c in self._cams.items():
            if not c.cfg.enabled:
                c.figures = {"state": "off", "exceeded": [], "window_s": c.cfg.window_s}
                continue
            events.extend(self._check_camera(name, c, now_mono))
        return events

    def _check_camera(self, name: str, c: _Camera, now: float) -> list[SystemEvent]:
        cfg = c.cfg
        self._count_corrupt(name, c, now)
        horizon = now - max(cfg.window_s, self._step_s(cfg))
        while c.rows and c.rows[0][0] < horizon:
            c.rows.popleft()
        while c.errors and c.errors[0][0] < now - cfg.window_s:
            c.errors.popleft()
        window = np.asarray([r for r in c.rows if r[0] >= now - cfg.window_s], np.float64).reshape(-1, _AGE + 1)
        if c.targets is None and c.learn_from is not None:
            self._learn(name, c, window, now)
        events: list[SystemEvent] = []
        layers: dict[str, dict] = {}
        pcts = np.percentile(window[:, 1:_AGE], [50, 95, 99], axis=0) if len(window) else None
        for k in KEYS:
            a = c.alerts.setdefault(k, _Alert())
            target = c.targets.get(k) if c.targets else None
            fig: dict = {"p50": None, "p95": None, "p99": None, "target_ms": target, "state": a.state}
            if pcts is not None:
                col = _COL[k] - 1
                fig.update(p50=round(pcts[0, col], 2), p95=round(pcts[1, col], 2), p99=round(pcts[2, col], 2))
            verdict: bool | None = None
            if target is not None and pcts is not None and len(window) >= MIN_SAMPLES:
                p99 = float(pcts[2, _COL[k] - 1])
                limit = cfg.alert_factor * target
                verdict = p99 > limit if a.state == "ok" else p99 < RECOVER_FRACTION * limit
                if a.update(verdict, now, cfg.window_s):
                    events.append(self._latency_event(name, k, a.state, p99, target, limit))
            else:
                a.update(None, now, cfg.window_s)
            fig["state"] = a.state
            layers[k] = fig
        error_fig, error_event = self._check_errors(name, c, len(window), now)
        if error_event is not None:
            events.append(error_event)
        exceeded = [k for k in (*KEYS, "error_rate") if k in c.alerts and c.alerts[k].state == "exceeded"]
        learning = c.targets is None
        c.figures = {
            "state": "exceeded" if exceeded else "learning" if learning else "ok",
            "exceeded": exceeded,
            "window_s": cfg.window_s,
            "alert_factor": cfg.alert_factor,
            "backend": self._backend,
            "samples": len(window),
            "layers": {k: layers[k] for k in LATENCY_LAYERS},
            "total": layers["total"],
            "error_rate": error_fig,
        }
        self._add_history(c, now)
        return events

    def _count_corrupt(self, name: str, c: _Camera, now: float) -> None:
        stats = self._stats.get(name)
        if stats is None:
            return
        corrupt = stats.capture.corrupt
        if c.corrupt_seen is not None and corrupt > c.corrupt_seen:
            c.errors.append((now, corrupt - c.corrupt_seen, 0))  # corrupt frames never reach the worker
        c.corrupt_seen = corrupt

    def _learn(self, name: str, c: _Camera, window: np.ndarray, now: float) -> None:
        """Finish learning once a whole window of results since the worker became ready is in."""
        assert c.learn_from is not None
        if now - c.learn_from < c.cfg.window_s:
            return
        rows = window[window[:, 0] >= c.learn_from]
        if len(rows) < MIN_SAMPLES:
            return
        med = np.median(rows[:, 1:_AGE], axis=0)
        p99 = np.percentile(rows[:, 1:_AGE], 99, axis=0)
        c.learned = {k: (float(med[_COL[k] - 1]), float(p99[_COL[k] - 1])) for k in KEYS}
        self._retarget(c, now)
        if c.targets is not None:
            c.learn_from = None
            log.info(
                "camera %s: latency budget learned (model %.1f ms): %s", name, c.learned["inference"][0],
                ", ".join(f"{k} {v:.1f}" for k, v in c.targets.items()),
            )  # fmt: skip

    def _check_errors(self, name: str, c: _Camera, results: int, now: float) -> tuple[dict, SystemEvent | None]:
        cfg = c.cfg
        errors = sum(n for _, n, _ in c.errors)
        frames = results + sum(taken for _, _, taken in c.errors)
        rate = errors / frames if frames else 0.0
        a = c.alerts.setdefault("error_rate", _Alert())
        event = None
        verdict: bool | None = None
        if frames >= MIN_ERROR_FRAMES:
            if a.state == "ok":
                verdict = rate > cfg.max_error_rate
            else:
                verdict = rate <= ERROR_RECOVER_FRACTION * cfg.max_error_rate
        if a.update(verdict, now, cfg.window_s):
            details = {"error_rate": round(rate, 6), "max_error_rate": cfg.max_error_rate, "errors": errors,
                       "frames": frames}  # fmt: skip
            if a.state == "exceeded":
                reason = f"error rate {rate:.2%} over {cfg.window_s:g} s (max {cfg.max_error_rate:.2%})"
                event = SystemEvent("error_rate_exceeded", reason, name, details=details)
            else:
                reason = f"error rate back to {rate:.2%} over {cfg.window_s:g} s"
                event = SystemEvent("error_rate_recovered", reason, name, details=details)
        fig = {"rate": round(rate, 6), "max_error_rate": cfg.max_error_rate, "errors": errors, "frames": frames,
               "state": a.state}  # fmt: skip
        return fig, event

    def _latency_event(
        self, camera: str, key: str, change: str, p99: float, target: float, limit: float
    ) -> SystemEvent:
        if change == "exceeded":
            kind: Literal["latency_budget_exceeded", "latency_budget_recovered"] = "latency_budget_exceeded"
            reason = f"{key} p99 {p99:.1f} ms over {limit:.1f} ms ({self._cams[camera].cfg.alert_factor:g} x budget)"
        else:
            kind = "latency_budget_recovered"
            reason = f"{key} p99 back to {p99:.1f} ms (budget {target:.1f} ms)"
        details = {"layer": key, "p99_ms": round(p99, 2), "budget_ms": round(target, 2), "limit_ms": round(limit, 2)}
        return SystemEvent(kind, reason, camera, details=details)

    def _step_s(self, cfg: BudgetConfig) -> float:
        return self._history_step_s or min(HISTORY_STEP_S, cfg.window_s)

    def _add_history(self, c: _Camera, now: float) -> None:
        step = self._step_s(c.cfg)
        if now < c.next_history:
            return
        if not c.next_history:
            c.next_history = now + step  # the first point covers a whole step
            return
        c.next_history = now + step
        ages = np.asarray([r[_AGE] for r in c.rows if r[0] >= now - step], np.float64)
        p50, p99 = np.percentile(ages, [50, 99]).round(2).tolist() if len(ages) else (None, None)
        c.history.append({"t": round(time.time(), 1), "frame_age_p50": p50, "frame_age_p99": p99,
                          "fps": round(len(ages) / step, 2)})  # fmt: skip

    def stats_section(self) -> dict:
        """Per camera, as of the last `check`: the budget's state and figures.

        Returns:
            `{camera: {state (ok, exceeded, learning, off), exceeded: [figures], window_s, alert_factor, backend,
            samples, layers: {layer: {p50, p95, p99, target_ms, state}}, total: {...}, error_rate: {rate,
            max_error_rate, errors, frames, state}}}` (ms).
        """
        return {
            name: dict(c.figures) or {"state": "learning" if c.cfg.enabled else "off", "exceeded": []}
            for name, c in self._cams.items()
        }

    def history(self) -> dict[str, list[dict]]:
        """Per camera the points of the last minutes: `t` (wall s), `frame_age_p50`/`_p99` (ms), `fps` (processed)."""
        return {name: list(c.history) for name, c in self._cams.items()}
