"""Timestamp formats shared by every message."""

from __future__ import annotations

from datetime import datetime, timezone


def iso_utc(ts: float) -> str:
    """Wall-clock seconds -> ISO-8601 UTC with milliseconds, e.g. 2026-11-23T03:12:05.114Z."""
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
