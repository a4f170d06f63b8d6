"""What every `vigil` subcommand shares.

The usage error that `main` turns into one line and exit 2, the `--config`/`--set` options and their loader, logging to
stderr, and the argparse value types.

A bad value is a usage error (one line, exit 2), never an empty run, an overflow deep inside a library or a
silent default.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

from app.config import ConfigError, VigilConfig, load_config

DEFAULT_CONFIG = "configs/default.yaml"


class UsageError(Exception):
    """What the user asked for cannot be done (bad config, missing file, a broker that refused us...).

    Raised by commands; `main` catches it in one place, prints `error: <message>` to stderr and exits 2. The
    message is the whole line after `error: `, phrased for the user.
    """


def setup_logging(level: str) -> None:
    """Logs go to stderr (stdout carries results), at `level` (debug, info, warning or error)."""
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def add_config_args(parser: argparse.ArgumentParser, config_help: str | None = None) -> None:
    """Add `--config/-c FILE` and repeated `--set KEY=VALUE`, read back by `load_config_args`.

    Args:
        parser: the subcommand's parser.
        config_help: what `--config` is for, when it is not the command's whole config.
    """
    parser.add_argument(
        "--config", "-c", default=None, help=config_help or f"YAML config (default: {DEFAULT_CONFIG} if present)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set cameras.0.source=clip.mp4 (value parsed as YAML)",
    )


def config_path_of(args: argparse.Namespace) -> str | None:
    """The config file a command reads, as given: `--config`, else `configs/default.yaml` when present."""
    if args.config is None and Path(DEFAULT_CONFIG).is_file():
        return DEFAULT_CONFIG
    return args.config


def load_config_args(args: argparse.Namespace) -> VigilConfig:
    """The config of `--config` (default: `configs/default.yaml` when present) with the `--set` overrides.

    Raises:
        UsageError: "invalid config: <key>: <problem>" for a file that cannot be read or a value that is wrong.
    """
    try:
        return load_config(config_path_of(args), args.set)
    except ConfigError as exc:
        raise UsageError(f"invalid config: {exc}") from exc


def positive_int(text: str) -> int:
    """Counts and sizes: a whole number, 1 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be 1 or more")
    return value


def positive_seconds(text: str) -> float:
    """Durations and timeouts: a finite number of seconds above 0 (`nan`, `inf` and negatives refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be a finite number of seconds above 0")
    return value
