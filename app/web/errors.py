"""Every error leaves as JSON with a reason; nothing a client sends can produce a traceback."""

from __future__ import annotations

import json
import logging

from aiohttp import web

log = logging.getLogger(__name__)

_KEPT_HEADERS = ("allow", "www-authenticate", "retry-after")


def json_error(cls: type[web.HTTPException], reason: str, **extra: object) -> web.HTTPException:
    body = json.dumps({"error": reason, "status": cls.status_code})
    return cls(text=body, content_type="application/json", **extra)  # type: ignore[arg-type]


@web.middleware
async def json_errors(request: web.Request, handler) -> web.StreamResponse:
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
