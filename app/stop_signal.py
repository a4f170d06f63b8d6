"""A stop by signal on its way up to `vigil`'s exit status.

SIGINT travels as Python's KeyboardInterrupt; SIGTERM as `Stopped`, raised by `vigil`'s handler (`app.cli.main`)
or re-raised after a pipeline that took the signal over ended (`raise_stop`), so a command that runs the pipeline
as one of its steps (a bench, a baseline recording) stops too instead of carrying on with a cut-short run.
"""

from __future__ import annotations

import signal
from typing import NoReturn


class Stopped(BaseException):
    """SIGTERM: the command stops (a BaseException, so `except Exception` lets it by, like KeyboardInterrupt)."""


def raise_stop(signum: int) -> NoReturn:
    """Raise the stop of signal `signum`: KeyboardInterrupt for SIGINT, `Stopped` for any other."""
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Stopped
