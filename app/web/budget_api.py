"""`GET /api/budget`: the latency budget per camera and its recent history, for the preview page's bar and chart.

Behind the same token as the rest of the API (the server's auth middleware covers every `/api/` path).
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from app.pipeline.service import PipelineControl


def add_routes(app: web.Application, pipeline: Callable[[], PipelineControl | None]) -> None:
    """Register `GET /api/budget` on `app`.

    Args:
        app: The server's application.
        pipeline: Returns the running pipeline, None before it started.
    """

    async def budget(request: web.Request) -> web.Response:
        """`{"cameras": {camera: budget stats entry}, "history": {camera: [{t, frame_age_p50, frame_age_p99, fps}]}}`.

        Both are empty before the pipeline runs or with the budget off.
        """
        p = pipeline()
        body = p.budget_report() if p is not None else {"cameras": {}, "history": {}}
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    app.router.add_get("/api/budget", budget)
