"""The versioned MQTT topic contract (schema 1). Every topic name is built here and nowhere else."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass


def topic_safe(text: str) -> str:
    """Labels become topic levels: no wildcards, separators or spaces."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_").lower() or "unknown"


@dataclass(frozen=True, slots=True)
class Topics:
    base: str

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def stats(self) -> str:
        return f"{self.base}/stats"

    def detections(self, camera: str) -> str:
        return f"{self.base}/{camera}/detections"

    def events(self, camera: str) -> str:
        return f"{self.base}/{camera}/events"

    def count(self, camera: str, label: str) -> str:
        return f"{self.base}/{camera}/{topic_safe(label) if label != 'all' else 'all'}/count"

    def snapshot(self, camera: str) -> str:
        return f"{self.base}/{camera}/snapshot"

    def system(self, camera: str) -> str:
        return f"{self.base}/{camera}/system"

    def detect_set(self, camera: str) -> str:
        return f"{self.base}/{camera}/detect/set"

    def detect_state(self, camera: str) -> str:
        return f"{self.base}/{camera}/detect/state"

    def confidence_set(self, camera: str) -> str:
        return f"{self.base}/{camera}/confidence/set"

    def confidence_state(self, camera: str) -> str:
        return f"{self.base}/{camera}/confidence/state"

    def command_subscriptions(self) -> list[str]:
        return [f"{self.base}/+/detect/set", f"{self.base}/+/confidence/set"]

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
    return json.dumps(obj, separators=(",", ":")).encode()
