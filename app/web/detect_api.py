"""Detection on request over HTTP: `POST /api/detect` (Vigil's schema) and `POST /v1/vision/detection` (DeepStack's).

Both read the image with the same rules (`app.web.image_upload`: content types, body and pixel limits checked
before decoding, the decoder `vigil detect` uses), and run it on the serving worker through the pipeline's
request queue (`app.pipeline.requests`): 503 with `Retry-After` when the queue is full, 504 when the deadline
passes first. A client that disconnects cancels its request (the server cancels the handler).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from aiohttp import web

from app.config import VigilConfig
from app.inference.detector import match_classes
from app.inference.protocol import DetectOptions
from app.pipeline.requests import DeadlineExceeded, DetectOutcome, QueueFull, RequestRejected
from app.pipeline.service import PipelineControl
from app.web.auth import token_matches
from app.web.deepstack import MinConfidenceError, deepstack_error, deepstack_success, parse_min_confidence
from app.web.errors import json_error
from app.web.image_upload import UploadedImage, UploadError, read_image_upload
from app.web.metrics import Metrics

log = logging.getLogger(__name__)

MAX_DET_LIMIT = 1000
LOADING = "the detector is still loading"
DECODE_SLOTS = 2  # images checked and decoded at once (a 50 MP decode holds 150 MB and more meanwhile)
DEEPSTACK_PATH = "/v1/vision/detection"
API_KEY_PENDING = web.RequestKey("vigil.api_key_pending", str)  # the token the form's `api_key` must match


class DetectApi:
    """The two detection endpoints, registered on the web service's application.

    Args:
        cfg: `api.*` (limits, default deadline) and `model.path` (the model's name in answers).
        pipeline: Returns the running pipeline, None before it started.
        metrics: Where served requests' latency is observed (`vigil_api_request_seconds`).
    """

    def __init__(
        self, cfg: VigilConfig, pipeline: Callable[[], PipelineControl | None], metrics: Metrics | None = None
    ) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.api = cfg.api
        self._pipeline = pipeline
        # Uploads being read or decoded at once: a full queue answers before reading, and these bound what a burst
        # of large images can hold in memory meanwhile (decoded pixels are up to api.max_pixels x 3 bytes each).
        self._uploads = asyncio.Semaphore(cfg.api.queue_size)
        self._decodes = asyncio.Semaphore(DECODE_SLOTS)
        self.counts = {"bad_requests": 0, "upload_timeouts": 0, "uploads_full": 0}

    def apply_limits(self) -> None:
        """A config reload changed `api`: uploads in progress finish under the old `api.queue_size`, new ones use it."""
        self._uploads = asyncio.Semaphore(self.api.queue_size)

    def stats(self) -> dict:
        """The `http` section: detection requests refused before the queue.

        `bad_requests` (4xx), `uploads_full` (503: `api.queue_size` uploads were being read already) and
        `upload_timeouts` (504: the deadline passed while the image was read).
        """
        return dict(self.counts)

    def add_routes(self, app: web.Application) -> None:
        """Register `POST /api/detect` and `POST /v1/vision/detection`."""
        app.router.add_post("/api/detect", self.detect)
        app.router.add_post(DEEPSTACK_PATH, self.deepstack)

    # ---- Vigil's endpoint ---------------------------------------------------------------------

    async def detect(self, request: web.Request) -> web.Response:
        """`POST /api/detect?conf=&iou=&classes=&max_det=&timeout_ms=` with an image body or multipart field `image`.

        Answers `{"detections": [{"class_id", "label", "confidence", "box"}], "width", "height", "model",
        "latency_ms": {"queue", "preprocess", "inference", "postprocess", "total"}}` (boxes xyxy in pixels of
        the EXIF-rotated image, as `vigil detect` prints them).
        """
        started = time.monotonic()
        pipeline = self._pipeline()
        if pipeline is None or pipeline.worker_info is None:
            raise json_error(web.HTTPServiceUnavailable, LOADING, headers={"Retry-After": "5"})
        names = pipeline.worker_info.names
        try:
            timeout_s = self._timeout_s(request.query.get("timeout_ms"))
            options = self._options(request.query, names)
            pipeline.check_detect_capacity()  # a full queue answers before the upload is read and decoded
            upload = await self._read(request, timeout_s)
        except RequestRejected as exc:
            cls = web.HTTPGatewayTimeout if exc.status == 504 else web.HTTPServiceUnavailable
            raise json_error(cls, exc.reason, headers=_retry_after(exc)) from None
        except UploadError as exc:
            self.counts["bad_requests"] += 1
            # The body `json_error` gives, built directly: aiohttp's 413 class wants the sizes, not a reason.
            return web.json_response({"error": exc.reason, "status": exc.status}, status=exc.status)
        try:
            outcome = await self._run(pipeline, upload, options, timeout_s - (time.monotonic() - started))
        except RequestRejected as exc:
            cls = web.HTTPGatewayTimeout if exc.status == 504 else web.HTTPServiceUnavailable
            raise json_error(cls, exc.reason, headers=_retry_after(exc)) from None
        self._observe("detect", started)
        return web.json_response({
            "detections": outcome.detections.to_list(names),
            "width": upload.width, "height": upload.height,
            "model": self._model(pipeline),
            "latency_ms": outcome.latency_ms(),
        })  # fmt: skip

    # ---- DeepStack's endpoint -----------------------------------------------------------------

    async def deepstack(self, request: web.Request) -> web.Response:
        """`POST /v1/vision/detection`, multipart `image` and optional `min_confidence` (default 0.4).

        Answers DeepStack's shape (`app.web.deepstack`), with `{"success": false, "error"}` and a 4xx for bad input,
        503/504 when the queue is full or the deadline passes.
        """
        started = time.monotonic()
        pipeline = self._pipeline()
        if pipeline is None or pipeline.worker_info is None:
            return web.json_response(deepstack_error(LOADING), status=503, headers={"Retry-After": "5"})
        expected: str | None = request.get(API_KEY_PENDING)
        try:
            pipeline.check_detect_capacity()
        except RequestRejected as exc:
            return web.json_response(deepstack_error(exc.reason), status=exc.status, headers=_retry_after(exc))
        try:
            upload = await self._read(
                request, self.api.default_timeout_ms / 1e3, allow_raw=False, authorize=_api_key_check(expected)
            )  # fmt: skip
            conf = parse_min_confidence(upload.form.get("min_confidence", request.query.get("min_confidence")))
        except UploadError as exc:
            self.counts["bad_requests"] += 1
            headers = {"WWW-Authenticate": 'Bearer realm="vigil"'} if exc.status == 401 else None
            return web.json_response(deepstack_error(exc.reason), status=exc.status, headers=headers)
        except MinConfidenceError as exc:
            self.counts["bad_requests"] += 1
            return web.json_response(deepstack_error(str(exc)), status=400)
        except RequestRejected as exc:
            return web.json_response(deepstack_error(exc.reason), status=exc.status, headers=_retry_after(exc))
        timeout_s = self.api.default_timeout_ms / 1e3 - (time.monotonic() - started)
        try:
            outcome = await self._run(pipeline, upload, DetectOptions(conf=conf), timeout_s)
        except RequestRejected as exc:
            return web.json_response(deepstack_error(exc.reason), status=exc.status, headers=_retry_after(exc))
        self._observe("deepstack", started)
        return web.json_response(
            deepstack_success(outcome.detections.to_list(pipeline.worker_info.names), outcome.total_ms)
        )

    # ---- shared -------------------------------------------------------------------------------

    def _observe(self, endpoint: str, started: float) -> None:
        if self.metrics is not None:
            self.metrics.request.labels(endpoint).observe(time.monotonic() - started)

    async def _read(
        self,
        request: web.Request,
        timeout_s: float,
        allow_raw: bool = True,
        authorize: Callable[[Mapping[str, str]], None] | None = None,
    ) -> UploadedImage:
        """Read and decode the upload within `timeout_s`, at most `api.queue_size` at once.

        Raises:
            RequestRejected: 503 when as many uploads are being read already, 504 when the deadline passes first
                (a slow client cannot hold a place past its own deadline).
            UploadError: The upload breaks a rule (4xx).
        """
        if self._uploads.locked():
            self.counts["uploads_full"] += 1
            raise QueueFull("too many uploads are being read (api.queue_size)", 1.0)
        async with self._uploads:
            # The image's own reader: not request.post()/read(), whose limit is the app's 64 KiB http.max_body_bytes.
            reading = read_image_upload(
                request, max_body_bytes=self.api.max_body_bytes, max_pixels=self.api.max_pixels, allow_raw=allow_raw,
                authorize=authorize, decode_gate=self._decodes,
            )  # fmt: skip
            try:
                return await asyncio.wait_for(reading, max(0.001, timeout_s))
            except asyncio.TimeoutError:
                self.counts["upload_timeouts"] += 1
                raise DeadlineExceeded("the deadline passed while the image was read") from None

    async def _run(
        self, pipeline: PipelineControl, upload: UploadedImage, options: DetectOptions, timeout_s: float
    ) -> DetectOutcome:
        """Queue the image with what is left of its deadline.

        Raises:
            RequestRejected: Full queue (503), deadline passed (504, also when reading the image used it up:
                `timeout_s` <= 0), or the detector failed or is stopping (503).
        """
        return await pipeline.detect(upload.image, options, timeout_s)

    def _timeout_s(self, raw: str | None) -> float:
        if raw is None:
            return self.api.default_timeout_ms / 1e3
        value = _integer(raw, "timeout_ms")
        if not 1 <= value <= self.api.max_timeout_ms:
            raise UploadError(400, f"timeout_ms must be 1..{self.api.max_timeout_ms} (api.max_timeout_ms)")
        return value / 1e3

    def _options(self, query: Mapping[str, str], names: Mapping[int, str]) -> DetectOptions:
        conf = iou = None
        if "conf" in query:
            conf = _unit(query["conf"], "conf")
        if "iou" in query:
            iou = _unit(query["iou"], "iou")
        max_det = None
        if "max_det" in query:
            max_det = _integer(query["max_det"], "max_det")
            if not 1 <= max_det <= MAX_DET_LIMIT:
                raise UploadError(400, f"max_det must be 1..{MAX_DET_LIMIT}")
        classes = _classes(query["classes"], names) if "classes" in query else None
        return DetectOptions(conf=conf, iou=iou, classes=classes, max_det=max_det)

    def _model(self, pipeline: PipelineControl) -> dict:
        info = pipeline.worker_info
        return {
            "name": Path(self.cfg.model.path).stem,
            "backend": info.backend.name if info else None,
            "imgsz": list(info.imgsz) if info else None,
        }


def _retry_after(exc: RequestRejected) -> dict[str, str] | None:
    return {"Retry-After": str(max(1, round(exc.retry_after_s)))} if exc.retry_after_s else None


def _api_key_check(expected: str | None) -> Callable[[Mapping[str, str]], None] | None:
    """For a DeepStack request without a valid header or query token: its form's `api_key` must be the token."""
    if expected is None:
        return None

    def check(form: Mapping[str, str]) -> None:
        if not token_matches(expected, form.get("api_key")):
            raise UploadError(401, "a valid token is required (form field api_key, or Authorization: Bearer)")

    return check


def _integer(raw: str, key: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise UploadError(400, f"{key} must be a whole number, got {raw[:40]!r}") from None


def _unit(raw: str, key: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise UploadError(400, f"{key} must be a number, got {raw[:40]!r}") from None
    if not 0 <= value <= 1:  # NaN fails this too
        raise UploadError(400, f"{key} must be between 0 and 1")
    return value


def _classes(raw: str, names: Mapping[int, str]) -> tuple[int, ...]:
    """`classes=person,car` or `classes=0,2` (any mix) as class ids of the serving model; unknown -> 400."""
    ids, unknown = match_classes([s.strip() for s in raw.split(",") if s.strip()], names)
    if unknown:
        raise UploadError(400, f"classes: {unknown[0][:40]} is not a class of the model")
    if not ids:
        raise UploadError(400, "classes: name at least one class")
    return ids
