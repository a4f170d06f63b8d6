"""The JSON payloads of results, object events and system events, one shape for every transport.

MQTT publishes them, the WebSocket stream sends them and webhooks POST them: a consumer that moves from
one to another reads the same fields. Each is a fresh dict inside the common envelope (`app.envelope`).
"""

from __future__ import annotations

import json

from app.boxes import normalized_xyxy_list
from app.clock import iso_utc
from app.envelope import envelope
from app.pipeline.records import ResultRecord, SystemEvent
from app.tracking.objects import ObjectEvent


def detections_payload(device_id: str, record: ResultRecord) -> dict:
    """One processed frame: seq, frame index, capture time, size (px), detections (with `box_normalized`), latency.

    And `model`: the model that produced it (name, sha256 prefix, precision, backend).
    """
    frame = record.result.frame
    w, h = frame.width, frame.height
    detections = record.detections_list()  # a fresh list: adding keys leaves the shared record as it is
    for d, box_normalized in zip(detections, normalized_xyxy_list([d["box"] for d in detections], w, h)):
        d["box_normalized"] = box_normalized
    return envelope(
        device_id, record.camera, seq=frame.seq, frame=frame.index, captured_at=iso_utc(frame.captured_wall),
        width=w, height=h, detections=detections, latency_ms=record.latency_ms(),
        model=dict(record.model) if record.model is not None else None,
        motion=frame.motion, regions=[list(box) for box in record.result.regions],
    )  # fmt: skip


def event_payload(device_id: str, camera: str, event: ObjectEvent, record: ResultRecord | None) -> dict:
    """One object event: type, object, the causing frame's capture time and latency, reason, zone and alert rule.

    `captured_at` is None and `latency_ms` empty when no frame caused it (detection switched off).
    """
    fields: dict = {
        "type": event.type, "object": event.obj,
        "captured_at": iso_utc(record.result.frame.captured_wall) if record is not None else None,
        "latency_ms": record.latency_ms() if record is not None else {},
    }  # fmt: skip
    if event.reason:
        fields["reason"] = event.reason
    if event.zone:  # a `loitering` update: which zone
        fields["zone"] = event.zone
    if event.rule is not None:
        fields["alert"] = event.rule.model_dump()
    return envelope(device_id, camera, **fields)


RESERVED_FIELDS = frozenset({"schema", "device_id", "camera", "event", "type", "reason", "at", "published_at"})


def system_payload(device_id: str, camera: str | None, event: SystemEvent) -> dict:
    """A system event: `event` (its type, also as `type`), reason, when (ISO 8601 UTC) and its own details.

    E.g. `{"event": "latency_budget_exceeded", "camera": "door", "layer": "inference", "p99_ms": 412.0,
    "budget_ms": 200.0, ...}`; the details are flat beside the common fields and never replace them.
    """
    details = {k: v for k, v in event.details.items() if k not in RESERVED_FIELDS}
    return envelope(device_id, camera, **details, event=event.type, type=event.type, reason=event.reason,
                    at=iso_utc(event.at))  # fmt: skip


def to_json(payload: dict) -> str:
    """Compact JSON (no spaces): the wire form of every payload (MQTT, WebSocket messages, webhook bodies)."""
    return json.dumps(payload, separators=(",", ":"))
