"""The JSON lines output of `vigil run`: one compact object per processed frame (`ResultRecord.as_json`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import IO

from app.pipeline.records import ResultRecord
from app.pipeline.service import ServiceBase


class JsonLinesSink(ServiceBase):
    """One compact JSON object per line, flushed per line so a pipe reader sees results as they happen.

    Args:
        path: Append to this file (opened now, closed at `stop`); default: write to `stream`.
        stream: Where to write when no path is given (default stdout; flushed, never closed).
    """

    def __init__(self, path: str | Path | None = None, stream: IO[str] | None = None) -> None:
        self._owned = path is not None
        if path is not None:
            self._stream: IO[str] = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in stop()
        else:
            self._stream = stream or sys.stdout

    def on_result(self, record: ResultRecord) -> None:
        """Write the record's JSON object as one line."""
        self._stream.write(json.dumps(record.as_json(), separators=(",", ":")) + "\n")
        self._stream.flush()

    async def stop(self) -> None:
        """Close the file (or flush the stream)."""
        if self._owned:
            self._stream.close()
        else:
            self._stream.flush()
