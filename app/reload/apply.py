"""Applying a reload plan to the running pipeline: prepare everything that can fail, then change it in order.

    prepare  new rings, trackers, MQTT/webhook/output checks   (a failure rejects the reload: nothing changed)
    commit   config sections -> cameras -> log level, tracking, watchdog -> model (thresholds, or a blue-green
             deployment through `_apply_model_change`) -> services swapped (MQTT reconnect, webhooks, JSON
             lines) -> every service's `apply_config` -> old rings unlinked -> monitors `reconfigure`

It waits until no worker replace or recycle is in progress first, so every worker that serves afterwards was
started with, or told about, the new cameras.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pydantic import BaseModel

from app.config import ConfigError, VigilConfig
from app.reload import cameras as camera_ops
from app.reload import services as service_ops
from app.reload.plan import ReloadPlan
from app.ring import FrameRing
from app.supervisor.capture_watchdog import CaptureWatchdog
from app.supervisor.policy import RecyclePolicy, RestartBudget
from app.tracking.stage import make_tracker
from app.zones.labels import model_labels, validate_labels

if TYPE_CHECKING:
    from app.pipeline.live import LivePipeline
    from app.pipeline.service import Service

log = logging.getLogger(__name__)

# Sections replaced as a whole on the running config: their old object stays with whoever is being replaced
# (the old MQTT service stops with its own settings). Every other section is updated in place, so whoever
# holds it (the request queue holds `api`, the supervisor `worker`) reads the new values.
REPLACED = frozenset({"cameras", "mqtt", "webhooks", "model", "log_level"})
SETTLE_POLL_S = 0.05


class ReloadRefused(Exception):
    """The reload cannot run now (a worker replace or recycle did not finish in time); nothing changed."""


@dataclass
class _Prepared:
    """What was built before anything changed; released again when the reload is rejected."""

    rings: dict[str, FrameRing] = field(default_factory=dict)
    webhooks: Service | None = None
    json_lines: Service | None = None

    async def release(self) -> None:
        for ring in self.rings.values():
            ring.close()
            ring.unlink()
        for svc in (self.webhooks, self.json_lines):
            if svc is not None:
                with contextlib.suppress(Exception):
                    await svc.stop()


class ConfigApplier:
    """Applies plans to one running pipeline.

    Args:
        pipe: The live pipeline (its config object is updated in place; services and supervisor share it).
    """

    def __init__(self, pipe: LivePipeline) -> None:
        self.pipe = pipe

    async def apply(self, new: VigilConfig, plan: ReloadPlan) -> dict[str, str]:
        """Apply every live section of `plan`, taking values from `new`.

        Returns:
            Section -> action, for sections whose action is only known now (`model`: `deploying`).

        Raises:
            ConfigError: Something the new config names cannot be used (a secret file, a tracker); nothing
                changed.
            ReloadRefused: A worker replace or recycle did not finish within its own time limits.
        """
        if not plan.live:
            return {}
        await self._settle()
        prepared = self._prepare(new, plan)
        try:
            self._check(new, plan)
            source = self.pipe.reloader.source
            names = model_labels(new.model) or self.pipe.tracking.names
            validate_labels(new, names, source.path if source is not None else None)
            if "webhooks" in plan.changed:
                prepared.webhooks = service_ops.build_webhooks(new)
            if _output_changed(self.pipe.cfg, new):
                prepared.json_lines = service_ops.build_json_lines(new)
        except BaseException:
            await prepared.release()
            raise
        return await self._commit(new, plan, prepared)

    async def _settle(self) -> None:
        """Wait until a worker serves and no replace or recycle runs (those read the cameras and model at start)."""
        sup, w = self.pipe.supervisor, self.pipe.cfg.worker
        limit = time.monotonic() + w.ready_timeout_s + 2 * w.stop_timeout_s + w.restart_backoff_max_s
        while sup.busy or sup.worker is None:  # (None: the first worker is still loading)
            if time.monotonic() > limit:
                raise ReloadRefused("a worker replace or recycle is still in progress; try again")
            await asyncio.sleep(SETTLE_POLL_S)

    def _prepare(self, new: VigilConfig, plan: ReloadPlan) -> _Prepared:
        prepared = _Prepared()
        cams = {c.name: c for c in new.cameras}
        try:
            for name in plan.cameras.added:
                prepared.rings[name] = camera_ops.create_ring(cams[name])
            for name in plan.cameras.new_ring:
                prepared.rings[name] = camera_ops.create_ring(cams[name], self.pipe.rings[name].latest_seq)
        except OSError as exc:
            for ring in prepared.rings.values():
                ring.close()
                ring.unlink()
            raise ConfigError(f"cameras: cannot create a frame ring in /dev/shm: {exc.strerror or exc}") from exc
        return prepared

    @staticmethod
    def _check(new: VigilConfig, plan: ReloadPlan) -> None:
        if "tracking" in plan.changed:
            try:
                make_tracker(new.tracking.tracker, new.tracking.track_lost_s)
            except ImportError as exc:
                raise ConfigError(f"tracking.tracker: {exc}") from exc
        if "mqtt" in plan.changed:
            service_ops.check_mqtt(new)

    async def _commit(self, new: VigilConfig, plan: ReloadPlan, prepared: _Prepared) -> dict[str, str]:
        pipe, cfg, changed = self.pipe, self.pipe.cfg, plan.changed
        output_changed = _output_changed(cfg, new)
        status_changed = cfg.output.status_interval_s != new.output.status_interval_s
        for section in changed - {"model"}:
            _adopt(cfg, section, getattr(new, section))
        # No await from here to the services: no worker can start in between with half the cameras.
        retired = self._apply_cameras(new, plan, prepared) if "cameras" in changed else []
        pipe.tracking.configure_cameras(cfg.cameras)  # zones, filters and masks apply from the next frame
        if "log_level" in changed:
            logging.getLogger().setLevel(cfg.log_level.upper())
        if "tracking" in changed:
            for camera, event in pipe.tracking.reconfigure(cfg.tracking):
                pipe.fanout.event(camera, event)
        if changed & {"watchdog", "worker"}:
            self._rebuild_watchdogs()
        actions = {}
        if "model" in changed:
            model = new.model
            if (model.conf, model.iou) != (cfg.model.conf, cfg.model.iou):
                pipe.set_thresholds(model.conf, model.iou)
            cfg.model.__dict__["deploy"] = model.deploy
            if plan.model_worker:  # now, so no recycle can start in between with the old model
                actions["model"] = pipe._apply_model_change(model)
        if "mqtt" in changed:
            await service_ops.swap(pipe, service_ops.find(pipe, "mqtt"), service_ops.build_mqtt(cfg))
        if "webhooks" in changed:
            await service_ops.swap(pipe, service_ops.find(pipe, "webhooks"), prepared.webhooks)
        if output_changed:
            await service_ops.swap(pipe, service_ops.find(pipe, "json_lines"), prepared.json_lines, first=True)
        if status_changed:
            pipe.restart_status_lines()
        for service in list(pipe.services):
            try:
                await service.apply_config(cfg, changed)
            except Exception:  # a service that cannot follow loses that change, the others go on
                log.exception("%s.apply_config failed", type(service).__name__)
        for ring in retired:  # nothing reads them now: the worker detached, encoders stopped
            ring.close()
            ring.unlink()
        if changed & {"budget", "monitoring", "cameras"}:
            for monitor in pipe.monitors:
                reconfigure = getattr(monitor, "reconfigure", None)
                if reconfigure is None:
                    continue
                try:
                    reconfigure(cfg)
                except Exception:
                    log.exception("%s.reconfigure failed", type(monitor).__name__)
        return actions

    def _apply_cameras(self, new: VigilConfig, plan: ReloadPlan, prepared: _Prepared) -> list[FrameRing]:
        pipe = self.pipe
        cams = {c.name: c for c in new.cameras}
        retired = [camera_ops.remove_camera(pipe, name) for name in plan.cameras.removed]
        for name in plan.cameras.changed:
            old_ring = camera_ops.restart_camera(pipe, cams[name], prepared.rings.get(name))
            if old_ring is not None:
                retired.append(old_ring)
        for name in plan.cameras.added:
            camera_ops.add_camera(pipe, cams[name], prepared.rings[name])
        for name in plan.cameras.detect:
            camera_ops.set_detect(pipe, cams[name])
        for name in plan.cameras.motion:
            pipe.captures[name].set_motion(cams[name].motion)
        return retired

    def _rebuild_watchdogs(self) -> None:
        pipe, cfg = self.pipe, self.pipe.cfg
        pipe.capture_watchdog = CaptureWatchdog(cfg.watchdog.capture_timeout_s, pipe.capture_watchdog.on_restart)
        sup = pipe.supervisor
        sup.restart_budget = RestartBudget.from_config(cfg.watchdog, cfg.worker)
        sup.recycle_policy = RecyclePolicy(cfg.watchdog)
        sup.recycle_policy.reset(time.monotonic())


def _output_changed(old: VigilConfig, new: VigilConfig) -> bool:
    """The JSON lines output itself changed (on/off or its file), not only the status interval."""
    a, b = old.output, new.output
    return (a.json_lines, a.json_path) != (b.json_lines, b.json_path)


def _adopt(cfg: VigilConfig, section: str, value: object) -> None:
    """Put a section of the new, already validated config into the running one, without revalidating.

    Assigning through pydantic would re-run the whole-config checks against a half-updated config (webhooks
    naming cameras not yet there), so the value goes in directly: replaced, or copied into the section object
    everyone already holds.
    """
    current = cfg.__dict__.get(section)
    if section in REPLACED or not isinstance(current, BaseModel) or not isinstance(value, BaseModel):
        cfg.__dict__[section] = value
    else:
        current.__dict__.update(value.__dict__)
