"""Every error leaves as JSON with a reason; nothing a client sends can produce a traceback."""

from __future__ import annotations

import json
import logging

from aiohttp import web
from aiohttp.typedefs import Handler

log = logging.getLogger(__name__)

_KEPT_HEADERS = ("allow", "www-authenticate", "retry-after")


def json_error(cls: type[web.HTTPException], reason: str, **extra: object) -> web.HTTPException:
    """Build an HTTP error whose body is ``{"error": reason, "status": code}``, for the handler to raise.

    Args:
        cls: The aiohttp exception class, e.g. ``web.HTTPBadRequest``.
        reason: Human-readable reason for the client.
        **extra: Further keyword arguments for ``cls`` (``headers``, or ``method``/``allowed_methods`` for 405).

    Returns:
        The exception, not raised.
    """
    body = json.dumps({"error": reason, "status": cls.status_code})
    return cls(text=body, content_type="application/json", **extra)  # type: ignore[arg-type]


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Middleware that turns every error into a JSON response of the same shape as ``json_error``.

    aiohttp's own errors (unknown route, 405, body over the limit) are rewritten keeping only the Allow,
    WWW-Authenticate and Retry-After headers; any other exception is logged with its traceback and answered
    500 without details. Non-error HTTP exceptions (redirects) and those already JSON pass through.
    """
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.content_type == "application/json" or exc.status < 400:
            raise
        # aiohttp's own (unknown route, 405, body over the limit...): the same shape as ours.
        headers = {k: v for k, v in exc.headers.items() if k.lower() in _KEPT_HEADERS}
        return web.json_response({"error": exc.reason, "status": exc.status}, status=exc.status, headers=headers)
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return web.json_response({"error": "internal error (see the service log)", "status": 500}, status=500)
