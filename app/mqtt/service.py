"""Publishes the pipeline to MQTT: detections, tracked-object events, counts, snapshots, stats, discovery,
and takes commands. Runs in the main process's asyncio loop and never blocks it: every publish is a
non-blocking hand-off to the link (QoS 0 straight to paho, QoS>0 into the bounded outbox)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np

from app.clock import iso_utc
from app.colors import class_color_bgr
from app.config import VigilConfig
from app.envelope import envelope
from app.mqtt.discovery import discovery_messages
from app.mqtt.link import MqttLink
from app.mqtt.topics import Topics, dumps
from app.pipeline.records import ResultRecord, SystemEvent
from app.pipeline.service import PipelineControl, ServiceBase
from app.tracking.iou_tracker import IouTracker
from app.tracking.objects import ObjectEvent, ObjectLifecycle
from app.types import Detections, FrameResult

log = logging.getLogger(__name__)


def make_tracker(kind: str, max_age_s: float):
    if kind == "bytetrack":
        from app.tracking.bytetrack import ByteTrack

        return ByteTrack(max_age_s=max_age_s)
    return IouTracker(max_age_s=max_age_s)


class MqttService(ServiceBase):
    def __init__(self, cfg: VigilConfig) -> None:
        self.cfg = cfg
        self.mcfg = cfg.mqtt
        self.device_id = cfg.device_id
        self.topics = Topics(self.mcfg.base_topic or f"vigil/{cfg.device_id}")
        self.cameras = [c.name for c in cfg.cameras]
        self.names: dict[int, str] = {}
        self.enabled = dict.fromkeys(self.cameras, True)
        self.conf = cfg.model.conf
        self.rejected_commands = 0
        self.events_published = 0
        self._trackers = {c: make_tracker(self.mcfg.tracker, self.mcfg.track_lost_s) for c in self.cameras}
        self._objects: dict[str, ObjectLifecycle] = {}
        self._last_counts: dict[str, dict[str, int]] = {}
        self._last_detections = dict.fromkeys(self.cameras, 0.0)
        self._pipeline: PipelineControl | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stats_task: asyncio.Task | None = None
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
        self._pipeline = pipeline
        self._loop = asyncio.get_running_loop()
        self.link.start()
        self._stats_task = asyncio.create_task(self._stats_loop(), name="mqtt-stats")

    def on_model_ready(self, names: Mapping[int, str]) -> None:
        if names != self.names:
            self.names = dict(names)
            self._objects = {
                c: ObjectLifecycle(
                    self.names,
                    min_hits=self.mcfg.min_hits,
                    update_interval_s=self.mcfg.event_update_interval_s,
                    lost_s=self.mcfg.track_lost_s,
                    alerts=self.mcfg.alerts,
                )
                for c in self.cameras
            }
            self._publish_state()

    async def stop(self) -> None:
        if self._stats_task is not None:
            self._stats_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stats_task
        await asyncio.get_running_loop().run_in_executor(None, self.link.stop)

    def on_system_event(self, event: SystemEvent) -> None:
        """Restarts, recycles, capture restarts: on `<base>/<camera>/system` (every camera for worker events)."""
        cameras = [event.camera] if event.camera else self.cameras
        for cam in cameras:
            payload = envelope(self.device_id, cam, type=event.type, reason=event.reason, at=iso_utc(event.at))
            self.link.publish(self.topics.system(cam), dumps(payload), qos=1)

    # ---- results -> messages ------------------------------------------------------------------

    def on_result(self, rec: ResultRecord) -> None:
        result = rec.result
        record = {"seq": result.frame.seq, "frame": result.frame.index,
                  "captured_at": iso_utc(result.frame.captured_wall), "detections": rec.detections_list(),
                  "latency_ms": rec.latency_ms()}  # fmt: skip
        cam = result.camera
        if not self.enabled.get(cam, True) or cam not in self._objects:
            return
        mono, wall = time.monotonic(), time.time()
        det = result.detections
        ids = self._trackers[cam].update(det, mono)
        for d, tid in zip(record["detections"], ids.tolist()):
            d["track_id"] = tid or None
        if not ids.all():  # ByteTrack leaves some detections out of every track: they are no object
            keep = ids > 0
            det, ids = Detections(det.xyxy[keep], det.confidence[keep], det.class_id[keep]), ids[keep]
        self._publish_detections(record, result, mono)
        wh = (result.frame.width, result.frame.height)
        events = self._objects[cam].update(det, ids, wh, mono, wall)
        for ev in events:
            self._publish_event(cam, ev, record)
        if any(ev.type in ("new", "alert") for ev in events) and self.mcfg.snapshot:
            self._publish_snapshot(cam, result, [ev.obj for ev in events])
        self._publish_counts(cam)

    def _publish_detections(self, record: dict, result: FrameResult, mono: float) -> None:
        cam = result.camera
        if not self.mcfg.detections or (self.mcfg.detections_only_when_detected and not record["detections"]):
            return
        if mono - self._last_detections[cam] < 1.0 / self.mcfg.detections_max_rate_hz:
            return
        self._last_detections[cam] = mono
        w, h = result.frame.width, result.frame.height
        for d in record["detections"]:
            x1, y1, x2, y2 = d["box"]
            d["box_normalized"] = [round(x1 / w, 4), round(y1 / h, 4), round(x2 / w, 4), round(y2 / h, 4)]
        payload = envelope(
            self.device_id, cam, seq=record["seq"], frame=record["frame"], captured_at=record["captured_at"],
            width=w, height=h, detections=record["detections"], latency_ms=record["latency_ms"],
        )  # fmt: skip
        self.link.publish(self.topics.detections(cam), dumps(payload), qos=0)

    def _publish_event(self, cam: str, ev: ObjectEvent, record: dict) -> None:
        fields: dict = {"type": ev.type, "object": ev.obj, "captured_at": record["captured_at"],
                        "latency_ms": record["latency_ms"]}  # fmt: skip
        if ev.reason:
            fields["reason"] = ev.reason
        if ev.rule is not None:
            fields["alert"] = ev.rule.model_dump()
        self.link.publish(self.topics.events(cam), dumps(envelope(self.device_id, cam, **fields)),
                          qos=self.mcfg.qos_events)  # fmt: skip
        self.events_published += 1

    def _publish_counts(self, cam: str, force: bool = False) -> None:
        lifecycle = self._objects.get(cam)
        if lifecycle is None:
            return
        counts = lifecycle.counts()
        last = self._last_counts.get(cam, {})
        for label, n in counts.items():
            if force or last.get(label) != n:
                self.link.publish(self.topics.count(cam, label), str(n), qos=1, retain=True)
        self._last_counts[cam] = counts

    def _publish_snapshot(self, cam: str, result: FrameResult, objects: list[dict]) -> None:
        pipeline = self._pipeline
        ring = pipeline.rings.get(cam) if pipeline is not None else None
        if ring is None:
            return
        # The exact frame if the ring still holds it, else the newest (a few frames later at most).
        view = ring.read_seq(result.frame.seq) or ring.read_latest()
        if view is None:
            return
        image = view.copy()
        if image is None:
            return
        image = np.ascontiguousarray(image)
        for obj in objects:
            x1, y1, x2, y2 = (int(v) for v in obj["box"])
            cv2.rectangle(image, (x1, y1), (x2, y2), class_color_bgr(obj["class_id"]), 2)
            cv2.putText(image, f"{obj['label']} {obj['confidence']:.2f} #{obj['id']}", (x1, max(12, y1 - 4)),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)  # fmt: skip
        ok, jpg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])
        if ok:
            self.link.publish(self.topics.snapshot(cam), jpg.tobytes(), qos=0, retain=True)

    # ---- state, discovery, stats --------------------------------------------------------------

    def _on_connected(self) -> None:
        """paho's thread: re-announce everything retained, from the asyncio loop."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._publish_state)

    def _publish_state(self) -> None:
        if self.names and self.mcfg.discovery:
            labels = [self.names[k] for k in sorted(self.names)]
            for topic, cfg in discovery_messages(
                self.mcfg.discovery_prefix, self.device_id, self.topics, self.cameras, labels,
                Path(self.cfg.model.path).name,
            ):  # fmt: skip
                self.link.publish(topic, dumps(cfg), qos=1, retain=True)
        for cam in self.cameras:
            self.link.publish(self.topics.detect_state(cam), "ON" if self.enabled[cam] else "OFF", qos=1, retain=True)
            self.link.publish(self.topics.confidence_state(cam), f"{self.conf:g}", qos=1, retain=True)
            self._publish_counts(cam, force=True)

    def stats_section(self) -> tuple[str, dict]:
        """This service's part of the stats document (MQTT `<base>/stats`, HTTP `/api/stats`)."""
        s = self.link.stats
        return "mqtt", {
            "connected": s.connected, "connects": s.connects, "disconnects": s.disconnects,
            "queue_depth": self.link.queue_depth(), "published": s.published, "acked": s.acked,
            "dropped_queue_full": s.dropped_queue_full, "dropped_offline_qos0": s.dropped_offline_qos0,
            "events": self.events_published, "rejected_commands": self.rejected_commands,
            "connected_since": iso_utc(s.connected_since) if s.connected_since else None,
            "last_error": s.last_error or None,  # why it is not connected (TLS, refused, ...); None when it is
        }  # fmt: skip

    async def _stats_loop(self) -> None:
        while True:
            await asyncio.sleep(self.mcfg.stats_interval_s)
            self.link.publish(self.topics.stats, dumps(self._pipeline.stats_document()), qos=0)

    # ---- commands -----------------------------------------------------------------------------

    def _on_message(self, topic: str, payload: bytes) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.command, topic, payload)

    def command(self, topic: str, payload: bytes) -> bool:
        """Applies one command message; invalid ones are logged, counted and ignored."""
        parsed = self.topics.parse_command(topic)
        text = payload.decode("utf-8", "replace").strip()
        if parsed is None or parsed[0] not in self.enabled:
            return self._reject(topic, text, "unknown camera or command")
        cam, kind = parsed
        if kind == "detect":
            if text.upper() not in ("ON", "OFF"):
                return self._reject(topic, text, "expected ON or OFF")
            on = text.upper() == "ON"
            if not on and self.enabled[cam] and cam in self._objects:
                for ev in self._objects[cam].end_all("detection switched off"):
                    self._publish_event(cam, ev, {"captured_at": None, "latency_ms": {}})
                self._publish_counts(cam)
            self.enabled[cam] = on
            if self._pipeline is not None:
                self._pipeline.set_detection(cam, on)
            self.link.publish(self.topics.detect_state(cam), "ON" if on else "OFF", qos=1, retain=True)
            log.info("mqtt: detection %s for %s", "on" if on else "off", cam)
            return True
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

    def _reject(self, topic: str, text: str, why: str) -> bool:
        self.rejected_commands += 1
        log.warning("mqtt: ignored command on %s (%.40r): %s", topic, text, why)
        return False
