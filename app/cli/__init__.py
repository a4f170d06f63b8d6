"""`vigil` command line. Results go to stdout, logs to stderr, errors are one clear line (exit 2).

`main` is the console script. It takes over SIGTERM before anything else is imported (loading the commands takes
~0.5 s), so a service stopped while it starts exits as cleanly as one stopped later: `vigil run` with 0 (nothing
was started yet, or the pipeline's own handlers stop it), the other commands with 143 after their cleanup. The
parser and the commands are in `app.cli.entry`.
"""

from __future__ import annotations

import signal
import sys
import threading
import types
from collections.abc import Sequence

from app.stop_signal import Stopped


def _on_sigterm(signum: int, frame: types.FrameType | None) -> None:
    raise Stopped


def command_of(argv: Sequence[str]) -> str | None:
    """The subcommand of a `vigil` command line: its first word that is not an option or `--log-level`'s value."""
    words = iter(argv)
    for word in words:
        if word == "--log-level":
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def stop_status(command: str | None, signum: int) -> int:
    """The exit status of a stop by signal `signum`.

    0 for `run` (a service stopped is a clean stop), else 128 + signum as shells report it (130, 143).
    """
    return 0 if command == "run" else 128 + signum


def main(argv: list[str] | None = None) -> int:
    """Run `vigil` with `argv` (default: the process's); its exit status (see `app.cli.entry.dispatch`)."""
    command = command_of(sys.argv[1:] if argv is None else argv)
    in_main_thread = threading.current_thread() is threading.main_thread()  # (signals are the main thread's)
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if in_main_thread else None
    try:
        from app.cli.entry import dispatch

        return dispatch(argv)
    except Stopped:  # SIGTERM before (or without) a command's own handling: its cleanup ran on the way here
        return stop_status(command, signal.SIGTERM)
    except KeyboardInterrupt:
        return stop_status(command, signal.SIGINT)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)  # (a caller in the same process gets its own handling back)
