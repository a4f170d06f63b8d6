"""The versioned MQTT topic contract (schema 1). Every topic name is built here and nowhere else."""

from __future__ import annotations

import re
from dataclasses import dataclass

from app.pipeline.payloads import to_json


def topic_safe(text: str) -> str:
    """Labels become topic levels: no wildcards, separators or spaces."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_").lower() or "unknown"


@dataclass(frozen=True, slots=True)
class Topics:
    """Every topic under one base (``vigil/<device>`` by default); camera names are used as given.

    Attributes:
        base: Topic prefix without a trailing slash.
    """

    base: str

    @property
    def status(self) -> str:
        """``<base>/status``: retained ``online``/``offline`` (the Last Will), Home Assistant's availability."""
        return f"{self.base}/status"

    @property
    def stats(self) -> str:
        """``<base>/stats``: the periodic JSON stats document of the whole appliance."""
        return f"{self.base}/stats"

    def detections(self, camera: str) -> str:
        """``<base>/<camera>/detections``: one JSON message per processed frame (QoS 0)."""
        return f"{self.base}/{camera}/detections"

    def events(self, camera: str) -> str:
        """``<base>/<camera>/events``: JSON object events (a tracked object appeared, changed, left)."""
        return f"{self.base}/{camera}/events"

    def count(self, camera: str, label: str) -> str:
        """``<base>/<camera>/<label>/count``: retained object count; the label made ``topic_safe``, ``all`` kept."""
        return f"{self.base}/{camera}/{topic_safe(label) if label != 'all' else 'all'}/count"

    def zone_count(self, camera: str, zone: str, label: str) -> str:
        """``<base>/<camera>/zone/<zone>/<label>/count``: retained count of objects in a zone; ``all`` kept."""
        return f"{self.base}/{camera}/zone/{zone}/{topic_safe(label) if label != 'all' else 'all'}/count"

    def snapshot(self, camera: str) -> str:
        """``<base>/<camera>/snapshot``: retained JPEG (bytes, not JSON)."""
        return f"{self.base}/{camera}/snapshot"

    def system(self, camera: str) -> str:
        """``<base>/<camera>/system``: JSON worker restarts, recycles and capture restarts affecting the camera."""
        return f"{self.base}/{camera}/system"

    def detect_set(self, camera: str) -> str:
        """``<base>/<camera>/detect/set``: command topic, payload ``ON``/``OFF``."""
        return f"{self.base}/{camera}/detect/set"

    def detect_state(self, camera: str) -> str:
        """``<base>/<camera>/detect/state``: retained ``ON``/``OFF``."""
        return f"{self.base}/{camera}/detect/state"

    def confidence_set(self, camera: str) -> str:
        """``<base>/<camera>/confidence/set``: command topic, payload a threshold such as ``0.4``."""
        return f"{self.base}/{camera}/confidence/set"

    def confidence_state(self, camera: str) -> str:
        """``<base>/<camera>/confidence/state``: retained current threshold (``%g``)."""
        return f"{self.base}/{camera}/confidence/state"

    @property
    def model(self) -> str:
        """``<base>/model``: retained JSON of the serving model (name, sha256 prefix, precision, backend)."""
        return f"{self.base}/model"

    @property
    def model_set(self) -> str:
        """``<base>/model/set``: command topic, payload a model path under ``model.deploy.models_dir``."""
        return f"{self.base}/model/set"

    @property
    def model_rollback(self) -> str:
        """``<base>/model/rollback``: command topic (any payload): return to the previous model."""
        return f"{self.base}/model/rollback"

    def command_subscriptions(self) -> list[str]:
        """Wildcard filters matching every camera's command topics, and the model commands."""
        return [f"{self.base}/+/detect/set", f"{self.base}/+/confidence/set", self.model_set, self.model_rollback]

    def parse_command(self, topic: str) -> tuple[str, str] | None:
        """`<base>/<camera>/detect/set` -> (camera, 'detect'); None for anything else."""
        prefix = self.base + "/"
        if not topic.startswith(prefix):
            return None
        parts = topic[len(prefix) :].split("/")
        if len(parts) == 3 and parts[2] == "set" and parts[1] in ("detect", "confidence"):
            return parts[0], parts[1]
        return None


def dumps(obj: dict) -> bytes:
    """Compact JSON (no spaces) as UTF-8 bytes, the wire form of every JSON payload."""
    return to_json(obj).encode()
