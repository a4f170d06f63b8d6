"""Prediction drift: per camera, the distribution of predictions against a baseline, as system events.

    observe (every result, O(detections)): per-second buckets -> the sliding window's running tally;
        while learning, the current baseline sub-window's tally too
    check (every tick, evaluates once a second): learning -> baseline after `baseline_s` (or loaded from
        `<state_dir>/drift/<camera>.json`); watching -> z per metric over the full window ->
        prediction_drift / prediction_drift_recovered, one event per metric state change (hysteresis)

The statistics live in `drift_stats`, the baseline files in `drift_baseline`.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np

from app.monitoring.drift_baseline import BaselineFileError, baseline_path, read_baseline
from app.monitoring.drift_stats import Baseline, Tally, current_values, z_score
from app.pipeline.records import SystemEvent

if TYPE_CHECKING:
    from app.config import DriftConfig, VigilConfig
    from app.pipeline.records import ResultRecord

log = logging.getLogger(__name__)

MIN_LEARNED_WINDOWS = 3  # sub-windows with frames a learned baseline needs (the variation is estimated from them)
SPARSE_LOG_INTERVAL_S = 3600.0  # a camera whose windows stay under min_frames is logged at most this often


class CameraDrift:
    """One camera's drift state: baseline (learning or loaded), sliding window, metrics in alert.

    Args:
        camera: The camera's name.
        cfg: `monitoring.drift`.
        baseline: A baseline loaded from a file (None: learn one from the first results).
        header: That file's header (`model`, `created`, ...), shown in the stats.
    """

    def __init__(
        self, camera: str, cfg: DriftConfig, baseline: Baseline | None = None, header: dict | None = None
    ) -> None:
        self.camera = camera
        self.cfg = cfg
        self.baseline = baseline
        self.source: Literal["learned", "file"] | None = "file" if baseline is not None else None
        self.header = header or {}
        self.t0: float | None = None  # first result (learning starts there), monotonic s
        self.watch_start: float | None = None  # the baseline is in place and results arrive since then
        self.learning: list[Tally] = []
        self.sub_window_s = cfg.baseline_s / cfg.baseline_windows
        self.buckets: deque[tuple[int, Tally]] = deque()
        self.window = Tally()
        self.alerts: set[str] = set()
        self.view: dict[str, dict] = {}
        self._last_eval = -1
        self._full = False
        self._sparse_logged: float | None = None  # when "too few frames to compare" was last logged

    def restart_learning(self, cfg: DriftConfig) -> None:
        """Start learning again with `cfg` (its baseline_s or baseline_windows changed while learning)."""
        self.cfg = cfg
        self.sub_window_s = cfg.baseline_s / cfg.baseline_windows
        self.t0 = None
        self.learning = []

    # ---- per result ---------------------------------------------------------------------------

    def observe(self, t: float, labels: Sequence[str], confidences: np.ndarray) -> None:
        """One processed frame at monotonic `t` (s) with its detections' labels and confidences."""
        if self.t0 is None:
            self.t0 = t
            if self.baseline is not None:
                self.watch_start = t
        sec = int(t)
        if not self.buckets or self.buckets[-1][0] != sec:
            self.buckets.append((sec, Tally()))
        self.buckets[-1][1].add_frame(labels, confidences)
        self.window.add_frame(labels, confidences)
        if self.baseline is None:
            i = int((t - self.t0) / self.sub_window_s)
            while len(self.learning) <= i:
                self.learning.append(Tally())
            self.learning[i].add_frame(labels, confidences)

    # ---- per tick -----------------------------------------------------------------------------

    def check(self, now: float) -> list[SystemEvent]:
        """Learn, slide and compare at monotonic `now`; the events of metric state changes."""
        while self.buckets and self.buckets[0][0] + 1 <= now - self.cfg.window_s:
            self.window.add(self.buckets.popleft()[1], -1)
        if self.baseline is None:
            self._maybe_finish_learning(now)
            return []
        if self.watch_start is None or int(now) == self._last_eval:
            return []
        self._last_eval = int(now)
        long_enough = now - self.watch_start >= self.cfg.window_s
        self._full = long_enough and self.window.frames >= self.cfg.min_frames
        if long_enough and not self._full:
            self._log_sparse(now)
        if not self._full:
            return []
        return self._compare()

    def _log_sparse(self, now: float) -> None:
        """Say (at most hourly) that this camera's windows are too thin to compare.

        Otherwise drift looks on while it judges nothing (a quiet, motion-gated camera is detected only every
        `idle_interval_s`).
        """
        if self._sparse_logged is not None and now - self._sparse_logged < SPARSE_LOG_INTERVAL_S:
            return
        self._sparse_logged = now
        log.warning(
            "drift: camera %s: %d frames in the last %.0f s, fewer than min_frames %d: not compared (a camera down, "
            "or a quiet one that motion gating detects rarely: README 'Scheduling and drift')",
            self.camera, self.window.frames, self.cfg.window_s, self.cfg.min_frames,
        )  # fmt: skip

    def _maybe_finish_learning(self, now: float, force: bool = False) -> None:
        if self.t0 is None:
            return
        done = int((now - self.t0) / self.sub_window_s + 1e-6)  # completed sub-windows (float-safe)
        if done < self.cfg.baseline_windows and not force:
            return
        windows = self.learning[:done]
        busy = [w for w in windows if w.frames]
        frames = sum(w.frames for w in busy)
        if len(busy) < MIN_LEARNED_WINDOWS or (frames < self.cfg.min_frames and not force):
            return  # the camera was down for much of it: keep learning until the baseline has substance
        self.baseline = Baseline(windows, self.sub_window_s, self.cfg.min_class_share)
        self.source = "learned"
        self.learning = []
        self.watch_start = now
        log.info(
            "drift: camera %s: baseline learned (%d frames, %d detections over %d sub-windows of %.1f s)",
            self.camera, frames, self.baseline.total.detections, len(busy), self.sub_window_s,
        )  # fmt: skip

    def finish_learning(self, now: float) -> Baseline | None:
        """End learning now with the completed sub-windows (a recording whose source ended early).

        Returns:
            The baseline, or None with fewer than 3 completed sub-windows that saw frames.
        """
        if self.baseline is None:
            self._maybe_finish_learning(now, force=True)
        return self.baseline

    def _compare(self) -> list[SystemEvent]:
        assert self.baseline is not None
        cfg = self.cfg
        values = current_values(self.window, self.baseline, cfg.min_detections, cfg.min_class_share, self.alerts)
        events: list[SystemEvent] = []
        view: dict[str, dict] = {}
        for name, value in values.items():
            base = self.baseline.metric(name)
            entry: dict = {
                "baseline": None if base is None else round(base.level, 4),
                "std": None if base is None else round(base.std, 4),
                "current": None if value is None else round(value, 4),
                "z": None,
                "alert": name in self.alerts,
            }
            view[name] = entry
            if base is None or value is None:
                continue  # too little to tell: the metric keeps its state
            z = z_score(value, base)
            entry["z"] = round(z, 2)
            details = {"metric": name, "baseline": entry["baseline"], "current": entry["current"], "z": entry["z"]}
            if name not in self.alerts and abs(z) > cfg.threshold_sigma:
                self.alerts.add(name)
                reason = (
                    f"{name} {value:.3g} vs baseline {base.level:.3g} ± {base.std:.2g} "
                    f"(z {z:+.1f}, beyond {cfg.threshold_sigma:g} sigma)"
                )
                events.append(
                    SystemEvent("prediction_drift", reason, self.camera, details={**details, "std": entry["std"]})
                )
            elif name in self.alerts and abs(z) <= cfg.threshold_sigma * cfg.recover_ratio:
                self.alerts.discard(name)
                reason = f"{name} {value:.3g} back near baseline {base.level:.3g} (z {z:+.1f})"
                events.append(
                    SystemEvent(
                        "prediction_drift_recovered", reason, self.camera, details={**details, "std": entry["std"]}
                    )
                )
            entry["alert"] = name in self.alerts
        self.view = view
        return events

    # ---- reporting ----------------------------------------------------------------------------

    def state(self) -> str:
        """learning, watching or drifting."""
        if self.baseline is None:
            return "learning"
        return "drifting" if self.alerts else "watching"

    def stats(self, now: float) -> dict:
        """This camera's entry of the `drift` stats section."""
        if self.baseline is None:
            progress = 0.0 if self.t0 is None else min(1.0, (now - self.t0) / self.cfg.baseline_s)
            frames = sum(w.frames for w in self.learning)
        else:
            progress, frames = 1.0, self.baseline.total.frames
        baseline: dict = {"source": self.source, "progress": round(progress, 3), "frames": frames}
        if self.source == "file":
            baseline.update(model=self.header.get("model"), created=self.header.get("created"))
        return {
            "state": self.state(),
            "baseline": baseline,
            "window": {"frames": self.window.frames, "detections": self.window.detections, "full": self._full},
            "metrics": self.view,
        }


class DriftMonitor:
    """The prediction drift monitor (`monitoring.drift`): one `CameraDrift` per configured camera.

    Args:
        cfg: The whole config (`monitoring.drift`, `cameras`, `state_dir`, `model.path`).
        load_baselines: Load `<state_dir>/drift/<camera>.json` where present (False: always learn, as
            `vigil drift baseline` does while it records one).
    """

    section = "drift"

    def __init__(self, cfg: VigilConfig, *, load_baselines: bool = True) -> None:
        self._load = load_baselines
        self._now: float | None = None  # the last check's instant
        self.cameras: dict[str, CameraDrift] = {}
        self.reconfigure(cfg)

    def reconfigure(self, cfg: VigilConfig) -> None:
        """Apply a new config: cameras added or removed, thresholds and windows, enabled on or off.

        A learned or loaded baseline is kept across a reload (a model swapped live is exactly what it should
        judge); a camera still learning starts over when `baseline_s` or `baseline_windows` changed.
        """
        self.cfg = cfg
        drift = cfg.monitoring.drift
        if not drift.enabled:
            self.cameras = {}
            return
        cameras: dict[str, CameraDrift] = {}
        for cam in cfg.cameras:
            state = self.cameras.get(cam.name)
            if state is None:
                state = self._new_camera(cam.name)
            elif state.baseline is None and (
                state.cfg.baseline_s != drift.baseline_s or state.cfg.baseline_windows != drift.baseline_windows
            ):
                state.restart_learning(drift)
            state.cfg = drift
            cameras[cam.name] = state
        self.cameras = cameras

    def _new_camera(self, camera: str) -> CameraDrift:
        drift = self.cfg.monitoring.drift
        path = baseline_path(self.cfg.state_dir, camera)
        if not self._load or not path.is_file():
            return CameraDrift(camera, drift)
        try:
            baseline, header = read_baseline(path, camera, drift.min_class_share)
        except BaselineFileError as exc:
            log.warning("drift: camera %s: unusable baseline file (%s); learning a new baseline", camera, exc)
            return CameraDrift(camera, drift)
        if os.path.realpath(header["model"]) != os.path.realpath(self.cfg.model.path):
            log.warning(
                "drift: camera %s: %s was recorded with model %s, not %s; learning a new baseline",
                camera, path, header["model"], self.cfg.model.path,
            )  # fmt: skip
            return CameraDrift(camera, drift)
        log.info(
            "drift: camera %s: baseline loaded from %s (recorded %s, %d frames over %.0f s)",
            camera, path, header["created"], header["frames"], header["duration_s"],
        )  # fmt: skip
        return CameraDrift(camera, drift, baseline, header)

    def observe(self, record: ResultRecord, published_mono_ns: int) -> None:
        """Count one result of its camera at `published_mono_ns` (O(detections))."""
        state = self.cameras.get(record.camera)
        if state is None:
            return
        det = record.detections
        labels = [record.names.get(c, str(c)) for c in det.class_id.tolist()]
        state.observe(published_mono_ns / 1e9, labels, det.confidence)

    def observe_frame_error(self, camera: str) -> None:
        """Frame errors are the budget monitor's business: a frame without a result says nothing of predictions."""

    def check(self, now_mono: float) -> list[SystemEvent]:
        """Learn, slide and compare every camera at `now_mono` (s); the events of metric state changes."""
        self._now = now_mono
        events: list[SystemEvent] = []
        for state in self.cameras.values():
            events.extend(state.check(now_mono))
        return events

    def camera(self, name: str) -> CameraDrift | None:
        """The drift state of camera `name` (None when drift is off or the camera is unknown)."""
        return self.cameras.get(name)

    def stats_section(self) -> dict:
        """The `drift` stats section, per camera.

        Returns:
            `{camera: {state, baseline: {source, progress, frames}, window: {frames, detections, full},
            metrics: {name: {baseline, std, current, z, alert}}}}`; `{camera: {state: off}}` when drift is off.
        """
        now = self._now if self._now is not None else time.monotonic()  # the clock check() runs on
        if not self.cfg.monitoring.drift.enabled:
            return {cam.name: {"state": "off"} for cam in self.cfg.cameras}
        return {name: state.stats(now) for name, state in self.cameras.items()}
