"""`vigil` command line. Results go to stdout, logs to stderr, errors are one clear line (exit 2).

`main` is the console script. It takes over SIGTERM before anything else is imported (loading the commands takes
~0.5 s), so a service stopped while it starts exits as cleanly as one stopped later: `vigil run` with 0 (nothing
was started yet, or the pipeline's own handlers stop it), the other commands with 143 after their cleanup. The
parser and the commands are in `app.cli.entry`.
"""

from __future__ import annotations

import signal
import sys
import types


class Stopped(BaseException):
    """SIGTERM arrived before a command took the signals over (a BaseException: `except Exception` lets it by)."""


def _on_sigterm(signum: int, frame: types.FrameType | None) -> None:
    raise Stopped


def main(argv: list[str] | None = None) -> int:
    """Run `vigil` with `argv` (default: the process's); its exit status (see `app.cli.entry.dispatch`)."""
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        try:
            from app.cli.entry import dispatch
        except Stopped:  # while loading the commands: nothing was started
            return 0
        except KeyboardInterrupt:  # the same, by Ctrl-C: a clean stop for `run`, as later (see dispatch)
            return 0 if "run" in (sys.argv[1:] if argv is None else argv) else 130
        return dispatch(argv)
    finally:
        signal.signal(signal.SIGTERM, previous)  # (a caller in the same process gets its own handling back)
