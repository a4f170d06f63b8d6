"""argparse value types shared by every subcommand: a bad value is a usage error (one line, exit 2),
never an empty run, an overflow deep inside a library or a silent default."""

from __future__ import annotations

import argparse
import math


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
