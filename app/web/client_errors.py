"""Keep clients' malformed HTTP out of the error log.

aiohttp answers a request it cannot parse (bad chunk sizes, conflicting lengths, a body that does not
decompress) with a 400 itself, which is right, and then logs it on `aiohttp.server` at ERROR with a
traceback, as if the server had failed. Any client could fill the log that way. This filter drops those
records when the exception is the client's (aiohttp's HTTP parsing and payload errors) and leaves one
DEBUG line instead; every other record of that logger passes unchanged.
"""

from __future__ import annotations

import logging

from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

log = logging.getLogger(__name__)

CLIENT_ERRORS = (HttpProcessingError, RequestPayloadError)


class ClientErrorFilter(logging.Filter):
    """Drops `aiohttp.server` records whose exception is a client's malformed request (see the module)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """False for a client's malformed request (logged at DEBUG instead), True for anything else."""
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, CLIENT_ERRORS):
            log.debug("malformed request from a client, answered 400: %s", str(exc).strip().splitlines()[0:1])
            return False
        return True


class ClientErrorsQuiet:
    """Install the filter on `aiohttp.server` for as long as the HTTP service runs (`install`, `remove`)."""

    def __init__(self) -> None:
        self._filter = ClientErrorFilter()
        self._logger = logging.getLogger("aiohttp.server")

    def install(self) -> None:
        """Add the filter (idempotent)."""
        if self._filter not in self._logger.filters:
            self._logger.addFilter(self._filter)

    def remove(self) -> None:
        """Take it away again."""
        self._logger.removeFilter(self._filter)
