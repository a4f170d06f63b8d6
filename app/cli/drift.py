"""`vigil drift baseline`: record one camera's prediction baseline through the real pipeline into the state dir.

    config (that camera only; no MQTT, HTTP, webhooks or JSON output) -> LivePipeline -> BaselineRecorder
        (a drift monitor that only learns) -> <state_dir>/drift/<camera>.json (and --output)

The running service loads the file at its next start (`monitoring.drift`, README "Prediction drift").
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time
from pathlib import Path

from app.cli.common import UsageError, add_config_args, load_config_args, setup_logging
from app.config import VigilConfig
from app.monitoring.drift import DriftMonitor
from app.monitoring.drift_baseline import baseline_document, baseline_path, write_baseline
from app.monitoring.drift_stats import Baseline
from app.pipeline.records import ResultRecord
from app.pipeline.service import PipelineControl, ServiceBase
from app.stop_signal import raise_stop

STARTUP_ALLOWANCE_S = 120.0  # worker start and camera connect before the first result, at most


class BaselineRecorder(ServiceBase):
    """A service that learns one camera's baseline from the results and stops the pipeline when it has it.

    Args:
        cfg: The config whose `monitoring.drift` (baseline_s = the recording's duration) the learning follows.
        camera: The camera recorded.
    """

    def __init__(self, cfg: VigilConfig, camera: str) -> None:
        self.monitor = DriftMonitor(cfg, load_baselines=False)
        self.camera = camera
        self.duration_s = cfg.monitoring.drift.baseline_s
        self.baseline: Baseline | None = None
        self._control: PipelineControl | None = None

    async def start(self, pipeline: PipelineControl) -> None:
        """Keep the pipeline to stop it once the baseline is complete."""
        self._control = pipeline

    def on_result(self, record: ResultRecord) -> None:
        """Learn from one result; at `duration_s` after the first, end learning and stop the pipeline."""
        if record.camera != self.camera or self.baseline is not None:
            return
        self.monitor.observe(record, time.monotonic_ns())
        state = self.monitor.camera(self.camera)
        now = time.monotonic()
        if state is None or state.t0 is None or now - state.t0 < self.duration_s:
            return
        self.baseline = state.finish_learning(now)
        if self._control is not None:
            self._control.request_stop("drift baseline recorded")

    def finish(self) -> Baseline | None:
        """The baseline, ending learning now if the pipeline stopped first (a file source that ended)."""
        state = self.monitor.camera(self.camera)
        if self.baseline is None and state is not None:
            self.baseline = state.finish_learning(time.monotonic())
        return self.baseline


def _duration(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"--duration: {text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise UsageError(f"--duration: {text} must be a finite number of seconds above 0")
    return value


def recording_configs(cfg: VigilConfig, camera: str, duration_s: float) -> tuple[VigilConfig, VigilConfig]:
    """The pipeline's config (that camera only, no outputs, no drift monitor of its own) and the recorder's.

    Raises:
        UsageError: `camera` is not configured.
    """
    names = [c.name for c in cfg.cameras]
    if camera not in names:
        raise UsageError(f"unknown camera {camera!r} (configured: {', '.join(names)})")
    data = cfg.model_dump()
    data["cameras"] = [c for c in data["cameras"] if c["name"] == camera]
    data["mqtt"]["enabled"] = False
    data["http"]["enabled"] = False
    data["webhooks"] = []
    data["output"]["json_lines"] = False
    drift = data["monitoring"]["drift"]
    run = VigilConfig.model_validate(
        {**data, "monitoring": {**data["monitoring"], "drift": {**drift, "enabled": False}}}
    )
    rec = VigilConfig.model_validate(
        {**data, "monitoring": {**data["monitoring"], "drift": {**drift, "enabled": True, "baseline_s": duration_s}}}
    )
    return run, rec


def _summary(camera: str, doc: dict, paths: list[Path]) -> str:
    lines = [
        f"baseline for camera {camera}: {doc['frames']} frames, {doc['detections']} detections over "
        f"{doc['duration_s']:g} s ({len(doc['sub_windows'])} sub-windows of {doc['sub_window_s']:g} s), "
        f"model {doc['model']}"
    ]
    for name, m in doc["metrics"].items():
        lines.append(f"  {name:<28} {m['baseline']:.4g} ± {m['std']:.2g}")
    lines += [f"written to {p}" for p in paths]
    return "\n".join(lines)


def cmd_baseline(args: argparse.Namespace) -> int:
    """Record `--camera`'s baseline for `--duration` seconds of results; write it and print a summary."""
    from app.pipeline.errors import PipelineError
    from app.pipeline.live import LivePipeline

    duration = _duration(args.duration)
    cfg = load_config_args(args)
    setup_logging(args.log_level or "warning")
    run_cfg, rec_cfg = recording_configs(cfg, args.camera, duration)
    recorder = BaselineRecorder(rec_cfg, args.camera)
    pipeline = LivePipeline(run_cfg, [recorder], duration_s=duration + STARTUP_ALLOWANCE_S)
    try:
        summary = asyncio.run(pipeline.run())
    except PipelineError as exc:
        raise UsageError(str(exc)) from exc
    if summary.stop_signal is not None:  # stopped before the duration: a cut-short baseline is not written
        raise_stop(summary.stop_signal)
    if summary.exit_code:
        raise UsageError(f"the pipeline failed (exit status {summary.exit_code}); no baseline written")
    baseline = recorder.finish()
    if baseline is None:
        frames = summary.cameras.get(args.camera, {}).get("frames_processed", 0)
        raise UsageError(
            f"camera {args.camera} gave too few results for a baseline ({frames} frames processed; 3 completed "
            f"sub-windows of {duration / rec_cfg.monitoring.drift.baseline_windows:g} s with frames are needed)"
        )
    doc = baseline_document(args.camera, cfg.model.path, baseline)
    paths = [baseline_path(cfg.state_dir, args.camera)]
    if args.output:
        paths.append(Path(args.output))
    for path in paths:
        try:
            write_baseline(path, doc)
        except OSError as exc:
            raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from exc
    print(_summary(args.camera, doc, paths))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add `drift baseline` to the `vigil` subcommands."""
    d = sub.add_parser("drift", help="prediction drift: record a camera's baseline")
    dsub = d.add_subparsers(dest="drift_command", required=True, metavar="COMMAND")
    b = dsub.add_parser(
        "baseline", help="run one camera through the pipeline and store its prediction baseline in the state dir"
    )
    add_config_args(b)
    b.add_argument("--camera", required=True, help="the camera's configured name")
    b.add_argument("--duration", required=True, help="seconds of results to learn from (after the first result)")
    b.add_argument("--output", default=None, help="also write the baseline file here")
    b.set_defaults(func=cmd_baseline)
