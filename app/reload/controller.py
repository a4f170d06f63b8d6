"""One reload at a time: read the config source, plan, apply, and report the outcome as a system event."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from app.config import ConfigError
from app.pipeline.records import SystemEvent
from app.reload.apply import ConfigApplier, ReloadRefused
from app.reload.plan import plan_reload

if TYPE_CHECKING:
    from app.pipeline.live import LivePipeline
    from app.reload.source import ConfigSource

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ReloadOutcome:
    """What a reload did: `applied` (maybe with sections that need a restart) or `rejected` (nothing changed).

    Attributes:
        status: `applied` or `rejected`.
        plan: The plan's `as_dict()` (applied, unchanged, restart_required); empty when rejected.
        error: Why it was rejected, naming the key (`cameras.1.fps: ...`); empty when applied.
    """

    status: str
    plan: dict = field(default_factory=dict)
    error: str = ""

    @property
    def applied(self) -> bool:
        """The new config runs now (sections that need a restart excepted)."""
        return self.status == "applied"

    def as_dict(self) -> dict:
        """The answer of `POST /api/config/reload` and `vigil reload`: status plus the plan or the error."""
        return {"status": self.status, **self.plan} if self.applied else {"status": self.status, "error": self.error}


class ConfigReloader:
    """Reloads the running pipeline's config from where it was read; a reload while one runs waits for it.

    Args:
        pipe: The live pipeline.
        source: The config file and `--set` overrides the service started with; None: reloads are rejected.
    """

    def __init__(self, pipe: LivePipeline, source: ConfigSource | None) -> None:
        self.pipe = pipe
        self.source = source
        self.applier = ConfigApplier(pipe)
        self._lock = asyncio.Lock()

    async def reload(self, trigger: str) -> ReloadOutcome:
        """Re-read, validate, plan and apply the config; emits `config_reloaded` or `config_rejected`.

        Args:
            trigger: Who asked (`SIGHUP`, `HTTP`), for the log and the event's reason.

        Returns:
            The outcome; an invalid config is rejected whole and the running config stays.
        """
        async with self._lock:
            try:
                if self.source is None:
                    raise ReloadRefused("this pipeline was not started from a config file")
                if self.pipe.stopping:
                    raise ReloadRefused("the service is stopping")
                new = self.source.load()
                plan = plan_reload(self.pipe.cfg, new)
                actions = await self.applier.apply(new, plan)
            except (ConfigError, ReloadRefused) as exc:
                outcome = ReloadOutcome("rejected", error=str(exc))
                self.pipe.emit_system_event(SystemEvent(
                    "config_rejected", f"config reload ({trigger}) rejected: {exc}", details={"error": str(exc)}
                ))  # fmt: skip
                return outcome
            answer = plan.as_dict()
            for section, action in actions.items():
                answer["applied"][section]["action"] = action
            applied, restart = sorted(answer["applied"]), sorted(answer["restart_required"])
            reason = f"config reload ({trigger}): " + (f"applied {', '.join(applied)}" if applied else "no change")
            if restart:
                reason += f"; needs a restart: {', '.join(restart)}"
            self.pipe.emit_system_event(SystemEvent(
                "config_reloaded", reason, details={"applied": applied, "restart_required": restart}
            ))  # fmt: skip
            return ReloadOutcome("applied", answer)
