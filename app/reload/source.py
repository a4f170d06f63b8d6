"""Where the running config came from, so a reload reads it the same way (`vigil run --config F --set k=v`)."""

from __future__ import annotations

from dataclasses import dataclass

from app.config import VigilConfig, load_config


@dataclass(frozen=True, slots=True)
class ConfigSource:
    """The config file and the `--set` overrides the service started with.

    Attributes:
        path: The YAML file; None when the service runs on defaults (then a reload re-applies the overrides only).
        overrides: `dotted.key=value` strings, applied in order after the file.
    """

    path: str | None
    overrides: tuple[str, ...] = ()

    def load(self) -> VigilConfig:
        """Read and validate the config now.

        Raises:
            ConfigError: The file is unreadable or invalid; the message names the key.
        """
        return load_config(self.path, list(self.overrides))
