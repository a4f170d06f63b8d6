"""`vigil run` (the live pipeline from a config) and `vigil check` (what vigil-engine.service runs first)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from app.cli.common import (
    UsageError,
    add_config_args,
    config_path_of,
    load_config_args,
    positive_seconds,
    setup_logging,
)
from app.config import ConfigError, VigilConfig, dump_config
from app.reload.source import ConfigSource
from app.zones.labels import model_labels, validate_labels


def _services(cfg: VigilConfig) -> list:
    """The enabled main-loop services (MQTT, HTTP/WebRTC, webhooks), imported only when configured."""
    services: list = []
    if cfg.mqtt.enabled:
        from app.mqtt.service import MqttService

        services.append(MqttService(cfg))
    if cfg.http.enabled:
        from app.web.server import WebService

        services.append(WebService(cfg))
    if cfg.webhooks:
        from app.webhooks.service import WebhookService

        services.append(WebhookService(cfg))
    return services


def _config_source(args: argparse.Namespace) -> ConfigSource:
    """Where `cfg` came from, so SIGHUP and `vigil reload` re-read the same file with the same `--set`s."""
    path = config_path_of(args)
    return ConfigSource(str(Path(path).resolve()) if path is not None else None, tuple(args.set))


def cmd_run(args: argparse.Namespace) -> int:
    """Run the live pipeline until a signal, `--duration` or the end of finite sources; its exit status."""
    from app.pipeline.errors import PipelineError
    from app.pipeline.json_lines import JsonLinesSink
    from app.pipeline.live import LivePipeline

    cfg = load_config_args(args)
    if args.print_config:
        sys.stdout.write(dump_config(cfg))
        return 0
    setup_logging(args.log_level or cfg.log_level)
    try:
        # a zone, filter or alert label the model does not have
        validate_labels(cfg, model_labels(cfg.model), config_path_of(args))
        services = _services(cfg)
    except ConfigError as exc:  # a secret file, certificate or token the services could not use
        raise UsageError(f"invalid config: {exc}") from exc
    if cfg.output.json_lines:
        services.insert(0, JsonLinesSink(path=cfg.output.json_path))
    try:
        pipeline = LivePipeline(cfg, services, duration_s=args.duration, config_source=_config_source(args))
    except ImportError as exc:  # tracking.tracker: bytetrack without the `tracking` extra
        raise UsageError(f"invalid config: {exc}") from exc
    try:
        summary = asyncio.run(pipeline.run())
    except PipelineError as exc:
        raise UsageError(str(exc)) from exc
    return summary.exit_code


def cmd_check(args: argparse.Namespace) -> int:
    """What vigil-engine.service runs before the service: config valid, model loads, secrets readable."""
    from app.backends import BackendError
    from app.inference.detector import Detector
    from app.inference.model_info import ModelShapeError

    setup_logging(args.log_level or "warning")
    cfg = load_config_args(args)
    try:
        det = Detector.from_config(cfg.model)
    except (BackendError, ModelShapeError) as exc:
        raise UsageError(str(exc)) from exc
    det.warmup(1)
    try:
        validate_labels(cfg, det.names, config_path_of(args))
    except ConfigError as exc:
        raise UsageError(f"invalid config: {exc}") from exc
    if cfg.mqtt.enabled:
        from app.mqtt.link import MqttConfigError, check_tls_files, read_password

        try:
            read_password(cfg.mqtt)
            if cfg.mqtt.tls.enabled or cfg.mqtt.tls.ca_file:
                check_tls_files(cfg.mqtt)
        except MqttConfigError as exc:
            raise UsageError(f"invalid config: {exc}") from exc
    if cfg.webhooks:
        from app.webhooks.service import WebhookService

        try:
            WebhookService(cfg)  # reads every webhooks[].secret_file
        except ConfigError as exc:
            raise UsageError(f"invalid config: {exc}") from exc
    print(
        f"ok: config valid; model {cfg.model.path} loads ({det.backend.name}, input {det.info.input_hw}, "
        f"{det.info.layout.value} head, {det.info.num_classes} classes: {', '.join(det.names.values())})"
    )
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add `run` and `check` to the `vigil` subcommands."""
    r = sub.add_parser("run", help="run the live pipeline from a config file")
    add_config_args(r)
    r.add_argument("--print-config", action="store_true", help="print the effective config as YAML and exit")
    r.add_argument("--duration", type=positive_seconds, default=None, help="stop after this many seconds")
    r.set_defaults(func=cmd_run)

    k = sub.add_parser("check", help="validate the config and load the model (used before the service starts)")
    add_config_args(k)
    k.set_defaults(func=cmd_check)
