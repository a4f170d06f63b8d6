"""The fields every JSON payload Vigil publishes carries (MQTT messages, the HTTP stats document).

The payload schema version, the device id, the camera where it concerns one, and when it was published.
"""

from __future__ import annotations

import time

from app.clock import iso_utc

SCHEMA = 1


def envelope(device_id: str, camera: str | None, **fields: object) -> dict:
    """`{"schema", "device_id", ["camera"], **fields, "published_at"}` (ISO 8601 UTC, now)."""
    out: dict = {"schema": SCHEMA, "device_id": device_id}
    if camera is not None:
        out["camera"] = camera
    out.update(fields)
    out["published_at"] = iso_utc(time.time())
    return out
