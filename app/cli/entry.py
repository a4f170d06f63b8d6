"""The `vigil` parser and dispatch: every subcommand module, `main`'s error handling and exit statuses.

Each subcommand group lives in its own module (`run`, `reload`, `detect`, `bench`, `export`, `assets`, `engine`, `mqtt`,
`drift`, `model`) with `add_parser(sub)` and its `cmd_*` functions. Commands raise `UsageError` for anything the user
must fix; `dispatch` is the one place that prints `error: ...` and picks the exit status.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from app import __version__
from app.cli import assets, bench, detect, drift, engine, export, model, mqtt, reload, run
from app.cli.common import UsageError
from app.config import redact_url

log = logging.getLogger("vigil")


def build_parser() -> argparse.ArgumentParser:
    """The `vigil` parser: every subcommand sets `func`, which takes the parsed args and returns the exit status."""
    p = argparse.ArgumentParser(prog="vigil", description="Real-time object detection for camera appliances.")
    p.add_argument("--version", action="version", version=f"vigil {__version__}")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default=None)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (run, reload, detect, bench, export, assets, engine, mqtt, drift, model):
        group.add_parser(sub)
    return p


def _error(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def dispatch(argv: list[str] | None = None) -> int:
    """Run `vigil` with `argv` (default: the process's); its exit status: 0, or 2 for any error.

    A stop by Ctrl-C or SIGTERM that the command does not handle itself goes up to `app.cli.main`.
    """
    # FFmpeg inside OpenCV prints its own errors ("moov atom not found") to stderr; ours say it better.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    os.environ.setdefault("OPENCV_LOG_LEVEL", "FATAL")  # decode errors are ours to report
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        return _error(str(exc))
    except Exception as exc:  # the last line of defence: no command ends in a traceback
        log.debug("%s failed", args.command, exc_info=True)
        detail = redact_url(str(exc)) or type(exc).__name__
        return _error(f"{args.command}: {detail} ({type(exc).__name__}; --log-level debug shows where)")
