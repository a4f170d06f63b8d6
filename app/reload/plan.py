"""What a reload changes: the running and the new config compared section by section (pure, no side effects).

Every top-level key of `VigilConfig` is a section. A section is unchanged, applied live, or needs a restart
(HTTP bind address/port, TLS and token files, `state_dir`, `device_id`); cameras are compared by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from app.config import CameraConfig, VigilConfig

# Sections the running service cannot change without a restart, and why.
RESTART_WHY = {
    "http": "the HTTP server's bind address, port, TLS files, token and limits are fixed while it listens",
    "state_dir": "state files (token, active model, baselines) are located at start",
    "device_id": "topics, MQTT client id, discovery and the stats name it; change it with a restart",
}
# How each live section is applied (the answer's `applied.<section>.action`).
LIVE_ACTION = {
    "log_level": "log level set",
    "output": "JSON lines output and status lines restarted with the new settings",
    "worker": "used for the next worker start, stop and restart backoff",
    "watchdog": "capture watchdog, restart budget and recycle policy rebuilt",
    "mqtt": "MQTT reconnected with the new settings",
    "tracking": "tracked objects ended; tracking restarted with the new settings",
    "api": "request limits applied",
    "webhooks": "webhook senders restarted with the new settings",
    "budget": "latency budget monitors reconfigured",
    "monitoring": "drift monitors reconfigured",
    "debug": "used by captures and workers started from now on",
    "events": "event store bound and snapshot settings applied (entries beyond the new bound dropped)",
}
THRESHOLD_KEYS = frozenset({"model.conf", "model.iou"})
RING_KEYS = ("ring_slots", "max_width", "max_height")
# Camera keys the running pipeline follows without restarting the capture (an RTSP reconnect costs seconds of
# video, too much for redrawing a zone): `budget` (the monitors reconfigure), `detect` (the worker's schedule,
# SetCameraDetect), `motion` (the capture thread's detector is rebuilt at its next frame), `zones`, `filters`
# and `object_mask` (the tracking stage, from the next result).
NO_CAPTURE_KEYS = ("budget", "detect", "motion", "zones", "filters", "object_mask")
OBJECT_KEYS = ("zones", "filters", "object_mask")


@dataclass(frozen=True, slots=True)
class SectionChange:
    """One changed section.

    Attributes:
        section: The top-level key (`mqtt`, `cameras`, ...).
        keys: The dotted keys that differ (`mqtt.port`, `cameras.door.source`), sorted.
        action: What applying it does, or why it needs a restart.
    """

    section: str
    keys: tuple[str, ...]
    action: str


@dataclass(frozen=True, slots=True)
class CameraChanges:
    """Cameras by name: added, removed, changed (capture restarted), changed with a new ring, and the live changes.

    Live, without a capture restart: a new `detect` is told to the worker, a new `motion` to the capture thread,
    new `zones` / `filters` / `object_mask` apply in the tracking stage (`objects`). A camera whose `budget` alone
    changed is in none of them: only the monitors follow it (`reconfigure`).
    """

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    new_ring: tuple[str, ...] = ()
    detect: tuple[str, ...] = ()
    motion: tuple[str, ...] = ()
    objects: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed or self.detect or self.motion or self.objects)


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    """The outcome of comparing two configs.

    Attributes:
        live: Sections to apply now, in the order they are applied.
        restart: Sections that differ but take effect only after a restart (never applied partly).
        unchanged: Sections equal in both configs.
        cameras: The camera-level diff (empty when `cameras` is unchanged).
        model_worker: `model` keys beyond thresholds and `model.deploy` changed: a new worker must load it.
    """

    live: tuple[SectionChange, ...]
    restart: tuple[SectionChange, ...]
    unchanged: tuple[str, ...]
    cameras: CameraChanges = field(default_factory=CameraChanges)
    model_worker: bool = False

    @property
    def changed(self) -> frozenset[str]:
        """Sections applied live."""
        return frozenset(c.section for c in self.live)

    def as_dict(self) -> dict:
        """The plan as JSON-ready data.

        Returns:
            `applied` {section: {keys, action}}, `unchanged` [sections], `restart_required` {section: {keys, why}}.
        """
        return {
            "applied": {c.section: {"keys": list(c.keys), "action": c.action} for c in self.live},
            "unchanged": list(self.unchanged),
            "restart_required": {c.section: {"keys": list(c.keys), "why": c.action} for c in self.restart},
        }


def diff_keys(old: Any, new: Any, prefix: str) -> list[str]:
    """Dotted keys under `prefix` whose values differ between two JSON-like values (lists by index)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in sorted(set(old) | set(new), key=str):
            out += diff_keys(old.get(k), new.get(k), f"{prefix}.{k}")
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        out = []
        for i, (a, b) in enumerate(zip(old, new)):
            out += diff_keys(a, b, f"{prefix}.{i}")
        return out
    return [] if old == new else [prefix]


def camera_changes(old: list[CameraConfig], new: list[CameraConfig]) -> tuple[CameraChanges, list[str]]:
    """Cameras compared by name (their order does not matter); the changes and the dotted keys that differ."""
    before = {c.name: c.model_dump(mode="json") for c in old}
    after = {c.name: c.model_dump(mode="json") for c in new}
    added = tuple(n for n in after if n not in before)
    removed = tuple(n for n in before if n not in after)
    changed: list[str] = []
    new_ring: list[str] = []
    detect: list[str] = []
    motion: list[str] = []
    objects: list[str] = []
    keys = [f"cameras.{n}" for n in added + removed]
    for name in (n for n in after if n in before):
        differ = diff_keys(before[name], after[name], f"cameras.{name}")
        keys += differ
        live = tuple(f"cameras.{name}.{k}" for k in NO_CAPTURE_KEYS)
        if any(not k.startswith(live) for k in differ):
            changed.append(name)
            if any(before[name][k] != after[name][k] for k in RING_KEYS):
                new_ring.append(name)
        if before[name]["detect"] != after[name]["detect"]:
            detect.append(name)
        if name in changed:
            continue  # the fresh capture and the tracking stage take the new motion and object settings anyway
        if before[name]["motion"] != after[name]["motion"]:
            motion.append(name)
        if any(before[name][k] != after[name][k] for k in OBJECT_KEYS):
            objects.append(name)
    changes = CameraChanges(
        added, removed, tuple(changed), tuple(new_ring), tuple(detect), tuple(motion), tuple(objects)
    )
    return changes, sorted(keys)


def plan_reload(old: VigilConfig, new: VigilConfig) -> ReloadPlan:
    """Compare the running config with a new, already validated one.

    Args:
        old: The config the pipeline runs with.
        new: The config just read.

    Returns:
        The plan: live sections in apply order (cameras first, model last, so a new worker sees the new
        cameras), restart-only sections with their keys and why, unchanged sections.
    """
    before, after = old.model_dump(mode="json"), new.model_dump(mode="json")
    sections = list(type(new).model_fields)
    live: list[SectionChange] = []
    restart: list[SectionChange] = []
    unchanged: list[str] = []
    cams = CameraChanges()
    model_worker = False
    for section in sections:
        if section == "cameras":
            cams, keys = camera_changes(old.cameras, new.cameras)
        else:
            keys = diff_keys(before[section], after[section], section)
        if not keys:
            unchanged.append(section)
        elif section in RESTART_WHY:
            restart.append(SectionChange(section, tuple(keys), RESTART_WHY[section]))
        elif section == "cameras":
            live.append(SectionChange(section, tuple(keys), _camera_action(cams)))
        elif section == "model":
            model_worker = any(k not in THRESHOLD_KEYS and not k.startswith("model.deploy.") for k in keys)
            action = ("deploying the new model blue-green" if model_worker
                      else "applied to the serving worker")  # fmt: skip
            live.append(SectionChange(section, tuple(keys), action))
        else:
            live.append(SectionChange(section, tuple(keys), LIVE_ACTION.get(section, "applied")))
    order = {s: i for i, s in enumerate(["cameras", *sections])}
    order["model"] = len(order) + 1
    live.sort(key=lambda c: order[c.section])
    return ReloadPlan(tuple(live), tuple(restart), tuple(unchanged), cams, model_worker)


def _camera_action(c: CameraChanges) -> str:
    parts = []
    if c.added:
        parts.append(f"added {', '.join(c.added)}")
    if c.removed:
        parts.append(f"removed {', '.join(c.removed)}")
    same_ring = [n for n in c.changed if n not in c.new_ring]
    if same_ring:
        parts.append(f"capture restarted: {', '.join(same_ring)}")
    if c.new_ring:
        parts.append(f"capture restarted with a new ring: {', '.join(c.new_ring)}")
    if c.detect:
        parts.append(f"detection schedule applied: {', '.join(c.detect)}")
    if c.motion:
        parts.append(f"motion detection applied: {', '.join(c.motion)}")
    if c.objects:
        parts.append(f"zones, filters and masks applied: {', '.join(c.objects)}")
    return "; ".join(parts) or "budget overrides applied"
