"""`vigil` command line. Results go to stdout, logs to stderr, errors are one clear line (exit 2)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path

from pydantic import ValidationError

from app import __version__
from app.cli_types import positive_int, positive_seconds
from app.config import (
    DEFAULT_MODEL_PATH,
    ConfigError,
    dump_config,
    format_validation_error,
    load_config,
    redact_url,
)

log = logging.getLogger("vigil")

DEFAULT_CONFIG = "configs/default.yaml"


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _fail(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


# ---- run ------------------------------------------------------------------------------------------


def _load(args: argparse.Namespace):
    """The config of --config/--set, or an exit code after printing the error."""
    config_path = args.config
    if config_path is None and Path(DEFAULT_CONFIG).is_file():
        config_path = DEFAULT_CONFIG
    try:
        return load_config(config_path, args.set)
    except ConfigError as exc:
        return _fail(f"invalid config: {exc}")


def _services(cfg) -> list:
    """The enabled main-loop services (MQTT, HTTP/WebRTC), imported only when configured."""
    services: list = []
    if cfg.mqtt.enabled:
        from app.mqtt.service import MqttService

        services.append(MqttService(cfg))
    if cfg.http.enabled:
        from app.web.server import WebService

        services.append(WebService(cfg))
    return services


def cmd_run(args: argparse.Namespace) -> int:
    from app.pipeline.errors import PipelineError
    from app.pipeline.json_lines import JsonLinesSink
    from app.pipeline.live import LivePipeline

    cfg = _load(args)
    if isinstance(cfg, int):
        return cfg
    if args.print_config:
        sys.stdout.write(dump_config(cfg))
        return 0
    _setup_logging(args.log_level or cfg.log_level)
    try:
        services = _services(cfg)
    except ConfigError as exc:  # a secret file, certificate or token the services could not use
        return _fail(f"invalid config: {exc}")
    if cfg.output.json_lines:
        services.insert(0, JsonLinesSink(path=cfg.output.json_path))
    pipeline = LivePipeline(cfg, services, duration_s=args.duration)
    try:
        summary = asyncio.run(pipeline.run())
    except PipelineError as exc:
        return _fail(str(exc))
    return summary.exit_code


# ---- check ----------------------------------------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    """What vigil-engine.service runs before the service: config valid, model loads, secrets readable."""
    from app.backends import BackendError
    from app.inference.detector import Detector
    from app.inference.model_info import ModelShapeError

    _setup_logging(args.log_level or "warning")
    cfg = _load(args)
    if isinstance(cfg, int):
        return cfg
    try:
        det = Detector.from_config(cfg.model)
    except (BackendError, ModelShapeError) as exc:
        return _fail(str(exc))
    det.warmup(1)
    if cfg.mqtt.enabled:
        from app.mqtt.link import MqttConfigError, check_tls_files, read_password

        try:
            read_password(cfg.mqtt)
            if cfg.mqtt.tls.enabled or cfg.mqtt.tls.ca_file:
                check_tls_files(cfg.mqtt)
        except MqttConfigError as exc:
            return _fail(f"invalid config: {exc}")
    print(
        f"ok: config valid; model {cfg.model.path} loads ({det.backend.name}, input {det.info.input_hw}, "
        f"{det.info.layout.value} head, {det.info.num_classes} classes: {', '.join(det.names.values())})"
    )
    return 0


# ---- detect ---------------------------------------------------------------------------------------


def cmd_detect(args: argparse.Namespace) -> int:
    from app.backends import BackendError
    from app.capture.sources import SourceError, open_source
    from app.config import ModelConfig
    from app.inference.detector import Detector
    from app.inference.model_info import ModelShapeError
    from app.pipeline.offline import detect_frames

    _setup_logging(args.log_level or "warning")
    try:
        mcfg = ModelConfig(
            path=args.model,
            conf=args.conf,
            iou=args.iou,
            imgsz=args.imgsz,
            backend=args.backend,
            threads=args.threads,
            max_det=args.max_det,
            classes=[c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None,
        )
    except ValidationError as exc:
        return _fail(f"invalid option: {format_validation_error(exc)}")
    try:
        detector = Detector.from_config(mcfg)
    except (BackendError, ModelShapeError) as exc:
        return _fail(str(exc))
    source = open_source(args.source)
    try:
        source.open()
    except SourceError as exc:
        return _fail(str(exc))
    out = sys.stdout
    try:
        for res in detect_frames(detector, source, args.max_frames):
            record = {
                "frame": res.frame.index,
                **({"file": res.frame.file} if res.frame.file is not None else {}),
                "pts": round(res.frame.pts, 3),
                "detections": res.detections.to_list(detector.names),
                "latency_ms": res.timings.as_dict(),
            }
            out.write(json.dumps(record, separators=(",", ":")) + "\n")
            out.flush()
    except SourceError as exc:
        return _fail(str(exc))
    except BrokenPipeError:
        return 0  # `vigil detect ... | head` is fine
    finally:
        source.close()
        detector.close()
    if source.corrupt:
        log.warning("%d unreadable frame(s) skipped in %s", source.corrupt, source.description)
    if source.shortfall:
        log.warning("%s", source.shortfall)
    return 0


# ---- export ---------------------------------------------------------------------------------------


def cmd_export(args: argparse.Namespace) -> int:
    from app.export import ExportError, export_onnx

    _setup_logging(args.log_level or "info")
    try:
        path = export_onnx(
            args.model,
            imgsz=args.imgsz,
            half=args.half,
            dynamic=args.dynamic,
            nms=args.nms,
            output=args.output,
        )
    except ExportError as exc:
        return _fail(str(exc))
    print(path)
    return 0


# ---- bench ----------------------------------------------------------------------------------------


def cmd_bench(args: argparse.Namespace) -> int:
    from app.bench.runner import run_bench

    _setup_logging(args.log_level or "warning")
    return run_bench(args)


# ---- parser ---------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vigil", description="Real-time object detection for camera appliances.")
    p.add_argument("--version", action="version", version=f"vigil {__version__}")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default=None)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser("run", help="run the live pipeline from a config file")
    r.add_argument("--config", "-c", default=None, help=f"YAML config (default: {DEFAULT_CONFIG} if present)")
    r.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set cameras.0.source=clip.mp4 (value parsed as YAML)",
    )
    r.add_argument("--print-config", action="store_true", help="print the effective config as YAML and exit")
    r.add_argument("--duration", type=positive_seconds, default=None, help="stop after this many seconds")
    r.set_defaults(func=cmd_run)

    k = sub.add_parser("check", help="validate the config and load the model (used before the service starts)")
    k.add_argument("--config", "-c", default=None)
    k.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    k.set_defaults(func=cmd_check)

    d = sub.add_parser("detect", help="detect on every frame of an image, folder or video; JSON lines on stdout")
    d.add_argument("source")
    d.add_argument("--model", default=DEFAULT_MODEL_PATH)
    d.add_argument("--conf", type=float, default=0.25)
    d.add_argument("--iou", type=float, default=0.7)
    d.add_argument(
        "--imgsz", type=positive_int, default=None, help="input size of a dynamic model (rounded up to its stride)"
    )
    d.add_argument("--max-det", type=positive_int, default=300)
    d.add_argument("--max-frames", type=positive_int, default=None)
    d.add_argument("--classes", default=None, help="keep only these classes: labels or ids, comma-separated")
    d.add_argument("--backend", default="auto", choices=["auto", "onnxruntime"])
    d.add_argument("--threads", type=int, default=0, help="backend threads (0 = all cores)")
    d.set_defaults(func=cmd_detect)

    b = sub.add_parser("bench", help="side-by-side throughput/latency benchmark")
    from app.bench.runner import add_arguments as add_bench_arguments

    add_bench_arguments(b)
    b.set_defaults(func=cmd_bench)

    e = sub.add_parser("export", help="export an Ultralytics .pt model to ONNX (needs the `export` extra)")
    e.add_argument("model")
    e.add_argument("--imgsz", type=positive_int, default=640)
    e.add_argument("--half", action="store_true")
    e.add_argument("--dynamic", action="store_true")
    e.add_argument("--nms", action="store_true", help="embed NMS (end-to-end [1,N,6] output)")
    e.add_argument("--output", default=None, help="destination .onnx (default: next to the model)")
    e.set_defaults(func=cmd_export)

    from app.assets import add_cli as add_assets_cli
    from app.engine.cli import add_cli as add_engine_cli
    from app.mqtt.tail import add_cli as add_mqtt_cli

    add_assets_cli(sub)
    add_engine_cli(sub)
    add_mqtt_cli(sub, _load)
    return p


def main(argv: list[str] | None = None) -> int:
    # FFmpeg inside OpenCV prints its own errors ("moov atom not found") to stderr; ours say it better.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    os.environ.setdefault("OPENCV_LOG_LEVEL", "FATAL")  # decode errors are ours to report
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the last line of defence: no command ends in a traceback
        log.debug("%s failed", args.command, exc_info=True)
        detail = redact_url(str(exc)) or type(exc).__name__
        return _fail(f"{args.command}: {detail} ({type(exc).__name__}; --log-level debug shows where)")


if __name__ == "__main__":
    raise SystemExit(main())
