"""The webhook service: object events that match a webhook's filters are POSTed to it (README "Webhooks").

Each event is serialised once, with `app.pipeline.payloads.event_payload` (the JSON MQTT publishes on
`<base>/<camera>/events`), and the same bytes are queued for every webhook it matches. Each webhook has its
own bounded queue, sender task, retries and circuit breaker (`app.webhooks.delivery`), so a slow or dead
receiver delays nothing but itself, and never the pipeline: `on_event` only enqueues.

At stop, queues get a short grace (`stop_grace_s`, all webhooks together) to drain while their breaker is
closed; what is still queued then is dropped and counted in `dropped`.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp

from app.config import ConfigError, VigilConfig, WebhookConfig
from app.pipeline.payloads import event_payload, to_json
from app.pipeline.records import ResultRecord
from app.pipeline.service import PipelineControl, ServiceBase
from app.secret_files import SecretFileError, read_secret_file
from app.tracking.objects import ObjectEvent
from app.webhooks.delivery import WebhookSender

log = logging.getLogger(__name__)


class WebhookConfigError(ConfigError):
    """A webhook's secret file is unreadable or empty; the message names the config key."""


def matches(hook: WebhookConfig, camera: str, event: ObjectEvent, label: str | None = None) -> bool:
    """Whether `event` of `camera` passes the webhook's `events`, `labels` and `cameras` filters.

    `label` is the one the `labels` filter judges (default: the event object's label now).
    """
    judged = event.obj.get("label") if label is None else label
    return (
        event.type in hook.events
        and (hook.labels is None or judged in hook.labels)
        and (hook.cameras is None or camera in hook.cameras)
    )


class ObjectLabels:
    """The label each tracked object was announced with (`new`), per camera, until its `end`.

    The tracker is class-agnostic, so an object's label can change while it is tracked (a `car` that turns out
    to be a `person`). Judging the `labels` filter by the label of each event would send a receiver an `end`
    for an object it never got the `new` of; judged by the announced label, an object's events go out as a
    whole or not at all.
    """

    def __init__(self) -> None:
        self._announced: dict[tuple[str, object], str] = {}

    def label_for(self, camera: str, event: ObjectEvent) -> str:
        """The label to judge `event` by; forgets the object at its `end`."""
        key = (camera, event.obj.get("id"))
        label = str(event.obj.get("label"))
        if event.type == "new":
            self._announced[key] = label
            return label
        if event.type == "end":
            return self._announced.pop(key, label)
        return self._announced.get(key, label)


def _read_secret(hook: WebhookConfig, index: int) -> str | None:
    if hook.secret_file is None:
        return None
    key = f"webhooks.{index}.secret_file"
    try:
        secret = read_secret_file(hook.secret_file, key)
    except SecretFileError as exc:
        raise WebhookConfigError(str(exc)) from exc  # the type callers catch; the text is the reader's
    if not secret:  # an empty HMAC key signs, but anyone can forge it
        raise WebhookConfigError(f"{key}: {hook.secret_file} is empty")
    return secret


class WebhookService(ServiceBase):
    """Delivers matching object events to every configured webhook.

    Args:
        cfg: The whole config (`webhooks`, `device_id`).
        stop_grace_s: Seconds `stop` lets the queues drain before dropping what is left.

    Raises:
        WebhookConfigError: A `secret_file` cannot be read or is empty.
    """

    def __init__(self, cfg: VigilConfig, stop_grace_s: float = 2.0) -> None:
        self.device_id = cfg.device_id
        self.stop_grace_s = stop_grace_s
        self.senders = [WebhookSender(hook, _read_secret(hook, i)) for i, hook in enumerate(cfg.webhooks)]
        self._session: aiohttp.ClientSession | None = None
        self.labels = ObjectLabels()

    async def start(self, pipeline: PipelineControl) -> None:
        """Open the HTTP client session and start one sender task per webhook."""
        # Per-attempt timeouts are each webhook's `timeout_s`, given per request.
        self._session = aiohttp.ClientSession(headers={"User-Agent": "vigil-webhooks"})
        for sender in self.senders:
            sender.start(self._session)
        log.info("webhooks: delivering to %s", ", ".join(s.name for s in self.senders) or "none")

    async def stop(self) -> None:
        """Let the queues drain for `stop_grace_s`, stop the senders, close the session (idempotent)."""
        await asyncio.gather(*(s.stop(self.stop_grace_s) for s in self.senders))
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def on_event(self, camera: str, event: ObjectEvent, record: ResultRecord | None) -> None:
        """Queue the event for every webhook whose filters it passes (serialised once, never blocks)."""
        body: bytes | None = None
        label = self.labels.label_for(camera, event)
        for sender in self.senders:
            if matches(sender.hook, camera, event, label):
                if body is None:
                    payload = event_payload(self.device_id, camera, event, record)
                    body = to_json(payload).encode()
                sender.enqueue(body, event.type)

    def stats_sections(self) -> dict[str, dict]:
        """The stats document's `webhooks` section: redacted URL -> that webhook's counters.

        Each entry holds delivered, retried, failed, rejected, dropped, queue_depth, breaker and last_error;
        a URL configured twice gets ` #<index>` on its second key.
        """
        section: dict[str, dict] = {}
        for i, sender in enumerate(self.senders):
            key = sender.name if sender.name not in section else f"{sender.name} #{i}"
            section[key] = sender.stats()
        return {"webhooks": section}
