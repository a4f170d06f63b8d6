"""Home Assistant MQTT discovery: retained config messages under `<prefix>/<component>/<node>/<object>/config`.

Every entity's availability follows `<base>/status` (the Last Will says `offline`), so Home Assistant
greys them out when the appliance or its broker link dies.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from app import __version__
from app.mqtt.topics import Topics, topic_safe


def discovery_messages(
    prefix: str,
    device_id: str,
    topics: Topics,
    cameras: list[str],
    labels: list[str],
    model_name: str,
    zones: Mapping[str, Sequence[tuple[str, Sequence[str]]]] | None = None,
) -> list[tuple[str, dict]]:
    """Build the retained Home Assistant discovery configs for the whole appliance.

    Per camera: for each label an occupancy binary sensor and a count sensor, a detection switch, a
    confidence number (0.05..0.95), and sensors for processed fps, capture fps and inference p50 (ms).
    Per zone of a camera: an occupancy binary sensor (on while anything is in it), an `all` count sensor and a
    count sensor per label of the zone's `labels` (none for a zone without `labels`: its `all` count covers
    it, and 80 COCO labels x zones x cameras would flood Home Assistant with entities).

    Args:
        prefix: Discovery prefix, usually ``homeassistant``.
        device_id: The appliance's id (made ``topic_safe`` for the node id and unique ids).
        topics: The appliance's topics the entities read and command.
        cameras: Camera names.
        labels: Class labels that get per-label entities.
        model_name: Shown as the device model.
        zones: Camera name -> its zones as `(zone name, zone labels)`; None or a missing camera: no zones.

    Returns:
        ``(topic, config)`` pairs, ``topic`` being ``<prefix>/<component>/<node>/<object>/config``.
    """
    node = topic_safe(device_id)
    device = {
        "identifiers": [f"vigil_{node}"],
        "name": f"Vigil {device_id}",
        "manufacturer": "Vigil",
        "model": model_name,
        "sw_version": __version__,
    }
    common = {
        "availability_topic": topics.status,
        "payload_available": "online",
        "payload_not_available": "offline",
        "device": device,
    }
    out: list[tuple[str, dict]] = []

    def add(component: str, object_id: str, cfg: dict) -> None:
        uid = f"vigil_{node}_{object_id}"
        out.append((f"{prefix}/{component}/{node}/{object_id}/config", {**cfg, "unique_id": uid, **common}))

    for cam in cameras:
        for label in labels:
            lid = topic_safe(label)
            add("binary_sensor", f"{cam}_{lid}_detected", {
                "name": f"{cam} {label} detected",
                "state_topic": topics.count(cam, label),
                "value_template": "{{ 'ON' if value | int(0) > 0 else 'OFF' }}",
                "device_class": "occupancy",
            })  # fmt: skip
            add("sensor", f"{cam}_{lid}_count", {
                "name": f"{cam} {label} count",
                "state_topic": topics.count(cam, label),
                "unit_of_measurement": "objects",
                "state_class": "measurement",
            })  # fmt: skip
        add("switch", f"{cam}_detection", {
            "name": f"{cam} detection",
            "command_topic": topics.detect_set(cam),
            "state_topic": topics.detect_state(cam),
            "payload_on": "ON",
            "payload_off": "OFF",
        })  # fmt: skip
        add("number", f"{cam}_confidence", {
            "name": f"{cam} confidence threshold",
            "command_topic": topics.confidence_set(cam),
            "state_topic": topics.confidence_state(cam),
            "min": 0.05,
            "max": 0.95,
            "step": 0.05,
        })  # fmt: skip
        for key, name, unit in (("processed_fps", "processed fps", "fps"), ("capture_fps", "capture fps", "fps")):
            add("sensor", f"{cam}_{key}", {
                "name": f"{cam} {name}",
                "state_topic": topics.stats,
                "value_template": f"{{{{ value_json.cameras['{cam}'].{key} }}}}",
                "unit_of_measurement": unit,
                "state_class": "measurement",
            })  # fmt: skip
        add("sensor", f"{cam}_inference_ms", {
            "name": f"{cam} inference p50",
            "state_topic": topics.stats,
            "value_template": f"{{{{ value_json.cameras['{cam}'].inference_ms.p50 }}}}",
            "unit_of_measurement": "ms",
            "state_class": "measurement",
        })  # fmt: skip
        for zone, zone_labels in (zones or {}).get(cam, ()):
            add("binary_sensor", f"{cam}_zone_{zone}_occupied", {
                "name": f"{cam} {zone} occupied",
                "state_topic": topics.zone_count(cam, zone, "all"),
                "value_template": "{{ 'ON' if value | int(0) > 0 else 'OFF' }}",
                "device_class": "occupancy",
            })  # fmt: skip
            for label in ("all", *zone_labels):
                add("sensor", f"{cam}_zone_{zone}_{topic_safe(label) if label != 'all' else 'all'}_count", {
                    "name": f"{cam} {zone} {label} count",
                    "state_topic": topics.zone_count(cam, zone, label),
                    "unit_of_measurement": "objects",
                    "state_class": "measurement",
                })  # fmt: skip
    return out
