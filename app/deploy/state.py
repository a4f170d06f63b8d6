"""The active model, kept across restarts: `<state_dir>/model/active.json`.

    {"current": {"path", "precision", "sha256", "name", "deployed_at"},
     "previous": [older entries, newest last: what a rollback returns to],
     "replaced_config_path": the config's model.path the deployments replaced}

At start the stored model is used while the config's `model.path` is still the one it replaced; an operator
who edited `model.path` since wins (and the stored state is left for them to overwrite with a deployment).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from app.config import ModelConfig

log = logging.getLogger(__name__)

STATE_FILE = Path("model") / "active.json"
MAX_PREVIOUS = 5  # rollback depth kept


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """One deployed model: path, precision, file SHA-256 (hex), name (file stem), when (Unix s)."""

    path: str
    precision: str
    sha256: str = ""
    name: str = ""
    deployed_at: float = 0.0

    @classmethod
    def from_dict(cls, d: dict) -> ModelEntry:
        """From the state file's form; unknown keys ignored.

        Raises:
            KeyError, TypeError: `path` or `precision` missing.
        """
        return cls(str(d["path"]), str(d["precision"]), str(d.get("sha256", "")), str(d.get("name", "")),
                   float(d.get("deployed_at", 0.0)))  # fmt: skip

    def as_dict(self) -> dict:
        """The JSON form."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class ActiveModel:
    """What the state file holds: the current model, older ones (newest last) and the config path replaced."""

    current: ModelEntry
    replaced_config_path: str
    previous: tuple[ModelEntry, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict:
        """The JSON form (as written to the file)."""
        return {"current": self.current.as_dict(), "previous": [p.as_dict() for p in self.previous],
                "replaced_config_path": self.replaced_config_path}  # fmt: skip


class ActiveModelStore:
    """Reads and writes `<state_dir>/model/active.json` (atomically: a temporary file, then rename).

    Args:
        state_dir: The top-level `state_dir`.
    """

    def __init__(self, state_dir: str | Path) -> None:
        self.path = Path(state_dir) / STATE_FILE

    def load(self) -> ActiveModel | None:
        """The stored state; None when there is none or it cannot be read (logged as a warning)."""
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            return ActiveModel(
                ModelEntry.from_dict(raw["current"]),
                str(raw["replaced_config_path"]),
                tuple(ModelEntry.from_dict(p) for p in raw.get("previous", [])),
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("model state %s is unreadable (%s); using the config's model", self.path, exc)
            return None

    def save(self, state: ActiveModel) -> None:
        """Write the state (creating the folder).

        Raises:
            OSError: It cannot be written.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state.as_dict(), indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, self.path)

    def deployed(self, new: ModelEntry, replaced: ModelEntry, config_path: str, rollback: bool = False) -> ActiveModel:
        """Record a completed deployment (or rollback) and return the new state.

        Args:
            new: The model that serves now.
            replaced: The model that served before.
            config_path: The config's `model.path` when no state existed yet (kept from an existing state).
            rollback: A rollback: the newest previous entry is consumed instead of `replaced` being added.

        Raises:
            OSError: The state cannot be written.
        """
        old = self.load()
        previous = list(old.previous) if old is not None else []
        # A rollback consumes the entry it returned to; a deployment keeps what it replaced.
        previous = previous[:-1] if rollback else [*previous, replaced][-MAX_PREVIOUS:]
        state = ActiveModel(
            new if new.deployed_at else ModelEntry(new.path, new.precision, new.sha256, new.name, time.time()),
            old.replaced_config_path if old is not None else config_path,
            tuple(previous),
        )
        self.save(state)
        return state


def startup_model(model: ModelConfig, store: ActiveModelStore) -> tuple[ModelConfig, str]:
    """The model section to start with: the stored active model, unless the config was edited since.

    Args:
        model: The config's `model` section.
        store: The state file.

    Returns:
        The section to use (the config's, or a copy with the stored path and precision) and why, for the log.
    """
    state = store.load()
    if state is None:
        return model, f"model {model.path} from the config (no deployed model stored)"
    if state.replaced_config_path != model.path:
        return model, (
            f"model {model.path} from the config: model.path was edited since the deployment of "
            f"{state.current.path} (it replaced {state.replaced_config_path}); the config wins"
        )
    if not Path(state.current.path).is_file():
        log.warning("the deployed model %s is gone; using the config's model %s", state.current.path, model.path)
        return model, f"model {model.path} from the config (the deployed {state.current.path} is gone)"
    chosen = model.model_copy(update={"path": state.current.path, "precision": state.current.precision})
    return chosen, f"deployed model {state.current.path} from {store.path} (it replaced the config's {model.path})"
