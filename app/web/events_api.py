"""`GET /api/events` (recent tracked objects, newest first) and `GET /api/events/{id}/snapshot.jpg`.

Behind the same token as the rest of the API (the server's auth middleware covers every `/api/` path).
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from app.pipeline.service import PipelineControl
from app.web.errors import json_error

DEFAULT_LIMIT = 50
MAX_LIMIT = 500


def parse_limit(text: str | None) -> int:
    """The `limit` query parameter: absent -> `DEFAULT_LIMIT`, else a whole number 1..`MAX_LIMIT`.

    Raises:
        web.HTTPBadRequest: Not a whole number in range (JSON body naming the parameter).
    """
    if text is None or text == "":
        return DEFAULT_LIMIT
    try:
        limit = int(text)
    except ValueError:
        raise json_error(
            web.HTTPBadRequest, f"limit: expected a whole number 1..{MAX_LIMIT}, got {text[:40]!r}"
        ) from None
    if not 1 <= limit <= MAX_LIMIT:
        raise json_error(web.HTTPBadRequest, f"limit: must be 1..{MAX_LIMIT}, got {limit}")
    return limit


def add_routes(app: web.Application, pipeline: Callable[[], PipelineControl | None]) -> None:
    """Register `GET /api/events` and `GET /api/events/{id}/snapshot.jpg` on `app`.

    Args:
        app: The server's application.
        pipeline: Returns the running pipeline, None before it started.
    """

    async def events(request: web.Request) -> web.Response:
        """`{"events": [entry, ...]}` newest first; `?camera=&label=&zone=&limit=` filter (README "Events").

        400 for a bad `limit`, 404 for a camera that is not configured.
        """
        q = request.query
        limit = parse_limit(q.get("limit"))
        camera, label, zone = (q.get(k) or None for k in ("camera", "label", "zone"))
        p = pipeline()
        if p is None:
            return web.json_response({"events": []}, headers={"Cache-Control": "no-store"})
        if camera is not None and camera not in p.rings:
            raise json_error(web.HTTPNotFound, f"camera: no camera named {camera[:64]!r}")
        body = {"events": p.recent_events(camera, label, zone, limit)}
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    async def snapshot(request: web.Request) -> web.Response:
        """The event's JPEG snapshot; 404 when the id is unknown, dropped, or has no snapshot (yet)."""
        p = pipeline()
        jpeg = p.event_snapshot(request.match_info["id"]) if p is not None else None
        if jpeg is None:
            raise json_error(web.HTTPNotFound, "no snapshot for this event (unknown, dropped, or none yet)")
        return web.Response(body=jpeg, content_type="image/jpeg", headers={"Cache-Control": "no-store"})

    app.router.add_get("/api/events", events)
    app.router.add_get("/api/events/{id}/snapshot.jpg", snapshot)
