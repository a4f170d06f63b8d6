"""Publishes the pipeline to MQTT and takes commands.

Detections, tracked-object events, counts, snapshots, stats and discovery go out; commands come in. Runs in the main
process's asyncio loop and never blocks it: every publish is a
non-blocking hand-off to the link (QoS 0 straight to paho, QoS>0 into the bounded outbox).

Tracking and the object lifecycle are a pipeline stage (`app.tracking.stage`): this service only publishes
what the records and events carry, and turns commands into calls of the pipeline's control API.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from app.clock import iso_utc
from app.config import VigilConfig, ZoneConfig
from app.deploy.errors import DeployError
from app.events.snapshots import SnapshotJob, SnapshotWorker, grab_frame
from app.mqtt.discovery import discovery_messages
from app.mqtt.link import MqttLink
from app.mqtt.topics import Topics, dumps
from app.mqtt.zones import ZoneCountTopics
from app.pipeline.payloads import detections_payload, event_payload, system_payload
from app.pipeline.records import ResultRecord, SystemEvent
from app.pipeline.service import PipelineControl, ServiceBase
from app.tracking.objects import ObjectEvent

log = logging.getLogger(__name__)


class MqttService(ServiceBase):
    """The MQTT topic contract (README "MQTT").

    A publisher of the pipeline's records and events, and the command topics routed to the pipeline's
    control API.

    Args:
        cfg: The whole config (`mqtt` broker and publishing keys, `tracking.snapshot`, cameras, model).
    """

    def __init__(self, cfg: VigilConfig) -> None:
        self.cfg = cfg
        self.mcfg = cfg.mqtt
        self.device_id = cfg.device_id
        self.topics = Topics(self.mcfg.base_topic or f"vigil/{cfg.device_id}")
        self.cameras = [c.name for c in cfg.cameras]
        self.names: dict[int, str] = {}
        self.conf = cfg.model.conf
        self.rejected_commands = 0
        self.events_published = 0
        self._last_counts: dict[str, dict[str, int]] = {}
        self._zones: dict[str, list[ZoneConfig]] = {c.name: list(c.zones) for c in cfg.cameras}
        self.zone_counts = ZoneCountTopics(self.topics)
        self._discovery_topics: set[str] = set()  # published (retained) so far: a vanished entity gets cleared
        self.snapshots = SnapshotWorker("vigil-mqtt-snapshot", max_pending=2)
        self._last_detections = dict.fromkeys(self.cameras, 0.0)
        self._commands: dict[str, Callable[[str, str, str], bool]] = {
            "detect": self._cmd_detect,
            "confidence": self._cmd_confidence,
        }
        self._pipeline: PipelineControl | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stats_task: asyncio.Task | None = None
        self._model_jobs: set[asyncio.Task] = set()  # deployments asked for over MQTT, until they end
        self.link = MqttLink(
            self.mcfg,
            client_id=self.mcfg.client_id or f"vigil-{cfg.device_id}",
            status_topic=self.topics.status,
            on_connected=self._on_connected,
            on_message=self._on_message,
            subscriptions=self.topics.command_subscriptions(),
        )

    # ---- lifecycle (called by the pipeline) ---------------------------------------------------

    async def start(self, pipeline: PipelineControl) -> None:
        """Connect (in the background) and start the stats loop."""
        self._pipeline = pipeline
        self._loop = asyncio.get_running_loop()
        self.link.start()
        self._stats_task = asyncio.create_task(self._stats_loop(), name="mqtt-stats")

    def on_model_ready(self, names: Mapping[int, str]) -> None:
        """A model with other labels serves: re-announce discovery, switches and (fresh) counts."""
        if names != self.names:
            self.names = dict(names)
            self._publish_state()

    async def stop(self) -> None:
        """Stop the stats loop, then the link (it publishes `offline` and disconnects)."""
        if self._stats_task is not None:
            self._stats_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stats_task
        self.snapshots.close()
        await asyncio.get_running_loop().run_in_executor(None, self.link.stop)

    async def apply_config(self, cfg: VigilConfig, changed: frozenset[str]) -> None:
        """A config reload: topics, switches and discovery for the new camera list and zones; the new confidence state.

        (A changed `mqtt` section replaces this service with a new one instead.) Retained topics of a removed
        camera or zone stay on the broker as they were; discovery of removed cameras and zones is cleared.
        """
        if not changed & {"cameras", "model"}:
            return
        self.cameras = [c.name for c in cfg.cameras]
        self._zones = {c.name: list(c.zones) for c in cfg.cameras}
        self._last_detections = {c: self._last_detections.get(c, 0.0) for c in self.cameras}
        self.conf = cfg.model.conf
        self._publish_state()

    def on_system_event(self, event: SystemEvent) -> None:
        """Restarts, recycles, capture restarts: on `<base>/<camera>/system` (every camera for worker events).

        A deployed model is also announced on the retained `<base>/model`.
        """
        cameras = [event.camera] if event.camera else self.cameras
        for cam in cameras:
            self.link.publish(self.topics.system(cam), dumps(system_payload(self.device_id, cam, event)), qos=1)
        if event.type == "model_deployed":
            self._publish_model()

    def _publish_model(self) -> None:
        info = self._pipeline.worker_info if self._pipeline is not None else None
        if info is not None and info.model is not None:
            self.link.publish(self.topics.model, dumps(info.model.as_dict()), qos=1, retain=True)

    # ---- records and events -> messages -------------------------------------------------------

    def on_event(self, camera: str, event: ObjectEvent, record: ResultRecord | None) -> None:
        """Publish one object event on `<base>/<camera>/events`.

        It carries the capture time and latency of the frame that caused it (None and {} when none did:
        detection switched off).
        """
        payload = event_payload(self.device_id, camera, event, record)
        self.link.publish(self.topics.events(camera), dumps(payload), qos=self.mcfg.qos_events)
        self.events_published += 1

    def on_result(self, record: ResultRecord) -> None:
        """Publish one tracked frame's detections (rate-limited), snapshot and changed counts.

        A snapshot goes out when an object appeared or alerted. Untracked frames (detection off for the camera, no model
        yet) publish nothing.
        """
        if record.tracker_id is None:
            return
        self._publish_detections(record)
        if self.cfg.tracking.snapshot and any(ev.type in ("new", "alert") for ev in record.events):
            self._publish_snapshot(record)
        self._publish_counts(record.camera, record.object_counts)
        self._publish_zone_counts(record.camera)

    def _publish_detections(self, record: ResultRecord) -> None:
        cam = record.camera
        if not self.mcfg.detections or (self.mcfg.detections_only_when_detected and not len(record.detections)):
            return
        mono = time.monotonic()
        if mono - self._last_detections[cam] < 1.0 / self.mcfg.detections_max_rate_hz:
            return
        self._last_detections[cam] = mono
        payload = detections_payload(self.device_id, record)
        self.link.publish(self.topics.detections(cam), dumps(payload), qos=0)

    def _publish_counts(self, cam: str, counts: Mapping[str, int], force: bool = False) -> None:
        """Retained `<base>/<camera>/<label>/count` for each label whose count changed (all with `force`)."""
        last = self._last_counts.get(cam, {})
        for label, n in counts.items():
            if force or last.get(label) != n:
                self.link.publish(self.topics.count(cam, label), str(n), qos=1, retain=True)
        self._last_counts[cam] = dict(counts)

    def _publish_zone_counts(self, cam: str, force: bool = False) -> None:
        """Retained `<base>/<camera>/zone/<zone>/<label>/count` for each value that changed (all with `force`)."""
        zones = self._zones.get(cam)
        if not zones or self._pipeline is None:
            return
        for topic, payload in self.zone_counts.changes(cam, zones, self._pipeline.zone_counts(cam), force):
            self.link.publish(topic, payload, qos=1, retain=True)

    def _object_counts(self, cam: str) -> Mapping[str, int]:
        return self._pipeline.object_counts(cam) if self._pipeline is not None else {}

    def _publish_snapshot(self, record: ResultRecord) -> None:
        """Retained JPEG of the frame with the boxes of the objects this frame's events are about.

        Full size; rendered on the snapshot thread (`app.events.snapshots`), published from the loop in order.
        """
        pipeline = self._pipeline
        cam = record.camera
        ring = pipeline.rings.get(cam) if pipeline is not None else None
        image = grab_frame(ring, record.result.frame.seq) if ring is not None else None
        if image is None:
            return
        job = SnapshotJob(image, tuple(ev.obj for ev in record.events))
        topic = self.topics.snapshot(cam)
        self.snapshots.submit(job, lambda jpeg: self.link.publish(topic, jpeg, qos=0, retain=True))

    # ---- state, discovery, stats --------------------------------------------------------------

    def _on_connected(self) -> None:
        """Paho's thread: re-announce everything retained, from the asyncio loop."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._publish_state)

    def _publish_state(self) -> None:
        if self.names and self.mcfg.discovery:
            labels = [self.names[k] for k in sorted(self.names)]
            zones = {cam: [(z.name, z.labels or []) for z in zs] for cam, zs in self._zones.items()}
            messages = discovery_messages(
                self.mcfg.discovery_prefix, self.device_id, self.topics, self.cameras, labels,
                Path(self.cfg.model.path).name, zones,
            )  # fmt: skip
            for topic, cfg in messages:
                self.link.publish(topic, dumps(cfg), qos=1, retain=True)
            published = {topic for topic, _ in messages}
            for topic in sorted(self._discovery_topics - published):  # an empty retained config removes the entity
                self.link.publish(topic, b"", qos=1, retain=True)
            self._discovery_topics = published
        self._publish_model()
        for cam in self.cameras:
            on = self._pipeline.detection_enabled(cam) if self._pipeline is not None else True
            self.link.publish(self.topics.detect_state(cam), "ON" if on else "OFF", qos=1, retain=True)
            self.link.publish(self.topics.confidence_state(cam), f"{self.conf:g}", qos=1, retain=True)
            self._publish_counts(cam, self._object_counts(cam), force=True)
            self._publish_zone_counts(cam, force=True)

    def stats_sections(self) -> dict[str, dict]:
        """This service's `mqtt` section of the stats document (MQTT `<base>/stats`, HTTP `/api/stats`)."""
        s = self.link.stats
        return {"mqtt": {
            "connected": s.connected, "connects": s.connects, "disconnects": s.disconnects,
            "queue_depth": self.link.queue_depth(), "published": s.published, "acked": s.acked,
            "dropped_queue_full": s.dropped_queue_full, "dropped_offline_qos0": s.dropped_offline_qos0,
            "events": self.events_published, "rejected_commands": self.rejected_commands,
            "connected_since": iso_utc(s.connected_since) if s.connected_since else None,
            "last_error": s.last_error or None,  # why it is not connected (TLS, refused, ...); None when it is
        }}  # fmt: skip

    async def _stats_loop(self) -> None:
        assert self._pipeline is not None  # set by start() before this task is created
        while True:
            await asyncio.sleep(self.mcfg.stats_interval_s)
            self.link.publish(self.topics.stats, dumps(self._pipeline.stats_document()), qos=0)

    # ---- commands -----------------------------------------------------------------------------

    def _on_message(self, topic: str, payload: bytes | bytearray) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.command, topic, payload)

    def command(self, topic: str, payload: bytes | bytearray) -> bool:
        """Applies one command message (`<base>/<camera>/<command>/set`).

        Invalid ones are logged, counted and ignored.

        Returns:
            True when applied, False when rejected.
        """
        text = payload.decode("utf-8", "replace").strip()
        if topic in (self.topics.model_set, self.topics.model_rollback):
            return self._cmd_model(topic, text)
        parsed = self.topics.parse_command(topic)
        if parsed is None or parsed[0] not in self.cameras or parsed[1] not in self._commands:
            return self._reject(topic, text, "unknown camera or command")
        cam, kind = parsed
        return self._commands[kind](cam, topic, text)

    def _cmd_detect(self, cam: str, topic: str, text: str) -> bool:
        """`ON`/`OFF` (any case): switch the camera's detection and echo it on `detect/state`."""
        if text.upper() not in ("ON", "OFF"):
            return self._reject(topic, text, "expected ON or OFF")
        on = text.upper() == "ON"
        if self._pipeline is not None:
            # Switching off ends the camera's objects: their `end` events come back through `on_event`.
            self._pipeline.set_detection(cam, on)
            self._publish_counts(cam, self._pipeline.object_counts(cam))
            self._publish_zone_counts(cam)
        self.link.publish(self.topics.detect_state(cam), "ON" if on else "OFF", qos=1, retain=True)
        log.info("mqtt: detection %s for %s", "on" if on else "off", cam)
        return True

    def _cmd_confidence(self, cam: str, topic: str, text: str) -> bool:
        """A number in (0, 1): the detector's confidence threshold, echoed on every camera's `confidence/state`."""
        try:
            conf = float(text)
        except ValueError:
            return self._reject(topic, text, "expected a number")
        if not 0.0 < conf < 1.0:
            return self._reject(topic, text, "confidence must be between 0 and 1")
        self.conf = conf
        if self._pipeline is not None:
            self._pipeline.set_thresholds(conf=conf)
        # One detector serves every camera, so the threshold (and its echo) applies to all of them.
        for c in self.cameras:
            self.link.publish(self.topics.confidence_state(c), f"{conf:g}", qos=1, retain=True)
        log.info("mqtt: confidence threshold set to %g", conf)
        return True

    def _cmd_model(self, topic: str, text: str) -> bool:
        """`model/set` (a path under the models directory) or `model/rollback`: a blue-green deployment.

        It runs as a task; its outcome comes back as a `model_deployed` / `model_rejected` system event.
        """
        if self._pipeline is None:
            return self._reject(topic, text, "the pipeline is not running yet")
        if topic == self.topics.model_set and not text:
            return self._reject(topic, text, "expected a model path under model.deploy.models_dir")
        job = self._pipeline.deploy_model(text) if topic == self.topics.model_set else self._pipeline.rollback_model()
        task = asyncio.create_task(self._await_model(job), name="mqtt-model")
        self._model_jobs.add(task)
        task.add_done_callback(self._model_jobs.discard)
        log.info(
            "mqtt: %s requested (%.80r)", "model deployment" if topic == self.topics.model_set else "rollback", text
        )
        return True

    @staticmethod
    async def _await_model(job: Awaitable[dict]) -> None:
        with contextlib.suppress(DeployError):  # the pipeline published the rejection as a system event
            await job

    def _reject(self, topic: str, text: str, why: str) -> bool:
        self.rejected_commands += 1
        log.warning("mqtt: ignored command on %s (%.40r): %s", topic, text, why)
        return False
