"""`POST /api/config/reload`: re-read the service's config file and apply it live (README "Live config reload").

Behind the API's token like every `/api/` route. 200 `{"status": "applied", "applied", "unchanged",
"restart_required"}`; 422 `{"status": "rejected", "error"}` when the new config is invalid (the running one
stays); 503 before the pipeline runs.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from app.pipeline.service import PipelineControl
from app.web.errors import json_error

RELOAD_PATH = "/api/config/reload"


def add_routes(app: web.Application, pipeline: Callable[[], PipelineControl | None]) -> None:
    """Register `POST /api/config/reload` on `app`; `pipeline()` is the running pipeline (None before start)."""

    async def reload(request: web.Request) -> web.Response:
        pipe = pipeline()
        if pipe is None:
            raise json_error(web.HTTPServiceUnavailable, "the pipeline is not running yet")
        answer = await pipe.reload_config()
        return web.json_response(answer, status=200 if answer.get("status") == "applied" else 422)

    app.router.add_post(RELOAD_PATH, reload)
