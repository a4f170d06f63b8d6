"""Model deployment over HTTP: `GET /api/model`, `POST /api/model` and `POST /api/model/rollback`.

A POST waits for the outcome: 200 once the new model serves, 422 with the reason and what validation found when
it failed to load or validate (the current model keeps serving), 400 for a bad body or path, 409 while another
deployment (or a worker recycle/replacement) is in progress. The token rules are those of the rest of the API.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

from aiohttp import web

from app.deploy.errors import DeployError
from app.pipeline.service import PipelineControl
from app.web.errors import json_error

LOADING = "the pipeline is not running yet"


class ModelApi:
    """The three model endpoints, registered on the web service's application.

    Args:
        pipeline: Returns the running pipeline, None before it started.
    """

    def __init__(self, pipeline: Callable[[], PipelineControl | None]) -> None:
        self._pipeline = pipeline

    def add_routes(self, app: web.Application) -> None:
        """Register `GET /api/model`, `POST /api/model` and `POST /api/model/rollback`."""
        app.router.add_get("/api/model", self._status)
        app.router.add_post("/api/model", self._deploy)
        app.router.add_post("/api/model/rollback", self._rollback)

    def _running(self) -> PipelineControl:
        p = self._pipeline()
        if p is None:
            raise json_error(web.HTTPServiceUnavailable, LOADING, headers={"Retry-After": "5"})
        return p

    async def _status(self, request: web.Request) -> web.Response:
        return web.json_response(self._running().model_status())

    async def _deploy(self, request: web.Request) -> web.Response:
        pipeline = self._running()
        try:
            body = json.loads(await request.text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise json_error(web.HTTPBadRequest, "the body is not valid JSON") from None
        if not isinstance(body, dict) or not isinstance(body.get("path"), str):
            raise json_error(web.HTTPBadRequest, 'expected {"path": "<model under model.deploy.models_dir>", '
                             '"precision": "fp32|fp16|int8" (optional)}')  # fmt: skip
        unknown = sorted(set(body) - {"path", "precision"})
        if unknown:
            raise json_error(web.HTTPBadRequest, f"unknown field(s): {', '.join(unknown)}")
        return await self._outcome(pipeline.deploy_model(body["path"], body.get("precision")))

    async def _rollback(self, request: web.Request) -> web.Response:
        return await self._outcome(self._running().rollback_model())

    @staticmethod
    async def _outcome(job: Awaitable[dict]) -> web.Response:
        # Shielded: a client that disconnects does not cut a deployment short halfway through its handover.
        try:
            answer = await asyncio.shield(job)
        except DeployError as exc:
            body: dict = {"error": exc.reason, "status": exc.status}
            if exc.validation:
                body["validation"] = exc.validation
            return web.json_response(body, status=exc.status)
        return web.json_response(answer)


def add_routes(app: web.Application, pipeline: Callable[[], PipelineControl | None]) -> None:
    """Register the model endpoints on `app` (see `ModelApi`)."""
    ModelApi(pipeline).add_routes(app)
