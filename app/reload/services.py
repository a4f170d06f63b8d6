"""Services a reload replaces: MQTT (reconnect with new settings), webhooks, and the JSON lines output.

Building a replacement is the part that can fail (an unreadable password or secret file, an unwritable
output file), so it happens before anything changes; swapping it in happens after.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from app.config import ConfigError, VigilConfig
from app.pipeline.json_lines import JsonLinesSink
from app.pipeline.service import Service

if TYPE_CHECKING:
    from app.pipeline.live import LivePipeline

log = logging.getLogger(__name__)


def check_mqtt(cfg: VigilConfig) -> None:
    """Build (and drop) an MQTT service from `cfg`, so its password and TLS files are read now.

    Raises:
        ConfigError: `mqtt.*`: a password or TLS file cannot be used.
    """
    if not cfg.mqtt.enabled:
        return
    from app.mqtt.link import MqttConfigError, check_tls_files
    from app.mqtt.service import MqttService

    try:
        if cfg.mqtt.tls.enabled or cfg.mqtt.tls.ca_file:
            check_tls_files(cfg.mqtt)
        MqttService(cfg)
    except MqttConfigError as exc:
        raise ConfigError(f"mqtt: {exc}") from exc


def build_mqtt(cfg: VigilConfig) -> Service | None:
    """The MQTT service for `cfg` (the running config, after `check_mqtt` passed), or None when disabled."""
    if not cfg.mqtt.enabled:
        return None
    from app.mqtt.service import MqttService

    return MqttService(cfg)


def build_webhooks(cfg: VigilConfig) -> Service | None:
    """The webhook service for `cfg`, or None without webhooks.

    Raises:
        ConfigError: A `webhooks[].secret_file` cannot be read.
    """
    if not cfg.webhooks:
        return None
    from app.webhooks.service import WebhookService

    return WebhookService(cfg)


def build_json_lines(cfg: VigilConfig) -> Service | None:
    """The JSON lines output for `cfg.output`, or None when off.

    Raises:
        ConfigError: `output.json_path` cannot be opened for appending.
    """
    if not cfg.output.json_lines:
        return None
    try:
        return JsonLinesSink(path=cfg.output.json_path)
    except OSError as exc:
        raise ConfigError(f"output.json_path: cannot open {cfg.output.json_path}: {exc.strerror or exc}") from exc


def find(pipe: LivePipeline, kind: str) -> Service | None:
    """The running service of a kind (`mqtt`, `webhooks`, `json_lines`), by class name."""
    names = {"mqtt": "MqttService", "webhooks": "WebhookService", "json_lines": "JsonLinesSink"}
    return next((s for s in pipe.services if type(s).__name__ == names[kind]), None)


async def swap(pipe: LivePipeline, old: Service | None, new: Service | None, *, first: bool = False) -> None:
    """Stop `old`, then start `new` in its place in the pipeline's services and fan-out (appended, or first).

    A new service learns the serving model's labels at once.

    Raises:
        PipelineError: `new` could not start (it is left out; the old one is already stopped).
    """
    lists = (pipe.services, pipe.fanout.services)
    index = None
    if old is not None:
        try:
            await old.stop()
        except Exception:
            log.exception("stopping %s failed", type(old).__name__)
        for services in lists:
            if old in services:
                index = services.index(old)
                services.remove(old)
    if new is None:
        return
    await new.start(pipe)
    for services in lists:
        services.insert(0 if first else len(services) if index is None else min(index, len(services)), new)
    if pipe.fanout.names:
        new.on_model_ready(pipe.fanout.names)
