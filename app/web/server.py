"""The HTTP side as a pipeline service: aiohttp in the main process's asyncio loop.

It only reads: results as they pass (a sink), the pipeline's snapshot for stats, the frame rings for
the preview. Nothing here can block or slow the frame path; encoding runs in a thread while viewers
watch and not at all otherwise.
"""

from __future__ import annotations

import json
import logging
import ssl
import sys
from collections.abc import Mapping
from importlib import resources

from aiohttp import web
from aiohttp.typedefs import Handler

from app.boxes import normalized_xyxy_list
from app.config import ConfigError, VigilConfig, redact
from app.pipeline.errors import PipelineError
from app.pipeline.records import ResultRecord, SystemEvent
from app.pipeline.service import PipelineControl, ServiceBase
from app.ring import FrameRing
from app.secret_files import read_secret_file
from app.tracking.objects import ObjectEvent
from app.web import budget_api, config_api, events_api, ice, model_api
from app.web.auth import TokenError, presented_token, resolve_token, token_matches
from app.web.camera_info import camera_document
from app.web.client_errors import ClientErrorsQuiet
from app.web.detect_api import API_KEY_PENDING, DEEPSTACK_PATH, DetectApi
from app.web.encoder import EncodedFrame, PreviewEncoder
from app.web.errors import json_error, json_errors
from app.web.latest_api import LatestFrameApi
from app.web.metrics import Metrics
from app.web.signalling import answer_offer, parse_offer
from app.web.stream import StreamHub
from app.web.viewers import ViewerRegistry

log = logging.getLogger(__name__)

OPEN_PATHS = ("/static/", "/favicon.ico")
SHUTDOWN_GRACE_S = 3.0


class HttpConfigError(ConfigError):
    """The `http` settings cannot work (token or TLS files)."""


class WebService(ServiceBase):
    """The HTTP side: preview page, JSON API, /metrics and WebRTC preview streams, as a pipeline service.

    Args:
        cfg: The whole config (`http` section, cameras).
    """

    def __init__(self, cfg: VigilConfig) -> None:
        self.cfg = cfg
        self.hcfg = cfg.http
        try:
            self.token = resolve_token(self.hcfg)
        except TokenError as exc:
            raise HttpConfigError(str(exc)) from exc
        self.ice_credentials = {
            i: read_secret_file(s.credential_file, f"http.ice_servers.{i}.credential_file")
            for i, s in enumerate(self.hcfg.ice_servers) if s.credential_file
        }  # fmt: skip
        self.ssl_context: ssl.SSLContext | None = None
        if self.hcfg.tls_cert_file:
            self.ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            try:
                self.ssl_context.load_cert_chain(self.hcfg.tls_cert_file, self.hcfg.tls_key_file)
            except (OSError, ssl.SSLError) as exc:
                raise HttpConfigError(f"http.tls_cert_file/tls_key_file: {exc}") from exc
        self.viewers = ViewerRegistry(self.hcfg.max_viewers)
        self.encoders: dict[str, PreviewEncoder] = {}
        self.metrics = Metrics(self._stats)
        self._quiet = ClientErrorsQuiet()
        self.detect_api = DetectApi(cfg, lambda: self._pipeline, self.metrics)
        self.stream = StreamHub(cfg.device_id, [c.name for c in cfg.cameras], cfg.api)
        self.latest = LatestFrameApi(
            lambda: [c.name for c in self.cfg.cameras],
            lambda: self._pipeline.rings if self._pipeline else None,
            self.hcfg.preview_nice,
        )
        self.names: dict[int, str] = {}
        self._overlay: dict[str, list[dict]] = {}
        self._pipeline: PipelineControl | None = None
        self._runner: web.AppRunner | None = None
        self.url = ""
        ice.install()

    # ---- service protocol ---------------------------------------------------------------------

    async def start(self, pipeline: PipelineControl) -> None:
        """Create a preview encoder per camera ring and start listening.

        Raises:
            PipelineError: the address cannot be bound.
        """
        self._pipeline = pipeline
        for name, ring in pipeline.rings.items():
            self.encoders[name] = self._encoder(name, ring)
        self._quiet.install()
        app = self.build_app()
        # No access log: it would carry ?token= query strings. Handler cancellation: a client that disconnects
        # cancels its detection request instead of leaving it to run for nobody.
        # Shutdown timeout: at stop, requests still in progress (a slow upload) get this long, not aiohttp's 60 s,
        # which systemd's TimeoutStopSec (30 s) would end with SIGKILL and leaked frame rings.
        self._runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=SHUTDOWN_GRACE_S
        )  # fmt: skip
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.hcfg.host, self.hcfg.port, ssl_context=self.ssl_context)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise PipelineError(f"http: cannot listen on {self.hcfg.host}:{self.hcfg.port}: {exc.strerror}") from exc
        port = self._runner.addresses[0][1]  # the real one when http.port is 0
        scheme = "https" if self.ssl_context else "http"
        host = f"[{self.hcfg.host}]" if ":" in self.hcfg.host else self.hcfg.host
        self.url = f"{scheme}://{host}:{port}/"
        self._announce()

    def _encoder(self, name: str, ring: FrameRing) -> PreviewEncoder:
        overlay = (lambda n=name: self._overlay.get(n, [])) if self.hcfg.server_side_boxes else None
        return PreviewEncoder(name, ring, self.hcfg, overlay, self._on_encoded)

    async def apply_config(self, cfg: VigilConfig, changed: frozenset[str]) -> None:
        """A config reload: encoders for added cameras (and new rings), none for removed ones; new `api` limits.

        Viewers of a removed camera, or of one whose ring was replaced, are dropped (the page reconnects).
        """
        if "cameras" in changed and self._pipeline is not None:
            rings = self._pipeline.rings
            for name, enc in list(self.encoders.items()):
                if rings.get(name) is not enc.ring:
                    del self.encoders[name]
                    self._overlay.pop(name, None)
                    await enc.stop()
            for name, ring in rings.items():
                if name not in self.encoders:
                    self.encoders[name] = self._encoder(name, ring)
        if changed & {"cameras", "api"}:
            self.stream.reconfigure([c.name for c in cfg.cameras], cfg.api)
        if "api" in changed:
            self.detect_api.apply_limits()

    def _announce(self) -> None:
        tok = self.token
        if tok.token is None:
            log.info("preview and API on %s", self.url)
            print(f"vigil: preview at {self.url}", file=sys.stderr, flush=True)
        elif tok.generated:
            # Printed once, when generated; afterwards it lives only in the 0600 file.
            print(f"vigil: preview at {self.url}?token={tok.token}  (token {tok.origin})", file=sys.stderr, flush=True)
        else:
            log.info("preview and API on %s (token from %s)", self.url, tok.origin)
            print(f"vigil: preview at {self.url}?token=<token from {tok.origin}>", file=sys.stderr, flush=True)

    def on_model_ready(self, names: Mapping[int, str]) -> None:
        """Keep the new model's labels."""
        self.names = dict(names)

    def on_system_event(self, event: SystemEvent) -> None:
        """Forward the system event to the stream and the camera's viewers (every viewer for worker events)."""
        self.stream.on_system_event(event)
        for v in self.viewers.viewers(event.camera):
            v.send({"type": "system", "event": event.type, "reason": event.reason})

    async def stop(self) -> None:
        """Close stream clients (1001) and viewer sessions, stop the encoders and the HTTP server."""
        await self.stream.stop()
        await self.viewers.close_all()
        for enc in self.encoders.values():
            await enc.stop()
        self.latest.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self._quiet.remove()

    def stats_sections(self) -> dict[str, dict]:
        """This service's `webrtc`, `ws` and `http` sections of the stats document.

        `webrtc`: viewers, sessions, rejected viewers, encoded frames and the last encode time (ms); `ws`: the
        WebSocket stream's clients and messages (`StreamHub.stats`); `http`: detection uploads refused before the
        queue (`DetectApi.stats`).
        """
        enc_ms = [e.last_encode_ms for e in self.encoders.values() if e.last_encode_ms is not None]
        webrtc = {
            "viewers": len(self.viewers), "sessions": self.viewers.sessions,
            "rejected_full": self.viewers.rejected_full,
            "encoded": sum(e.frames_encoded for e in self.encoders.values()),
            "encode_ms_last": round(max(enc_ms), 2) if enc_ms else None,
        }  # fmt: skip
        return {"webrtc": webrtc, "ws": self.stream.stats(), "http": self.detect_api.stats()}

    # ---- results -----------------------------------------------------------------------------

    def on_result(self, record: ResultRecord) -> None:
        """Update /metrics and send the frame's boxes (normalised 0..1 xyxy) to the camera's viewers and overlay."""
        result = record.result
        self.metrics.observe(record)
        self.stream.on_result(record)
        viewers = self.viewers.viewers(result.camera)
        if not viewers and not self.hcfg.server_side_boxes:
            return
        w, h = max(1, result.frame.width), max(1, result.frame.height)
        detections = record.detections_list()
        boxes = [
            {"class_id": d["class_id"], "label": d["label"], "confidence": d["confidence"], "box_norm": norm}
            for d, norm in zip(detections, normalized_xyxy_list([d["box"] for d in detections], w, h))
        ]
        self._overlay[result.camera] = boxes
        latency = record.latency_ms()
        msg = {
            "type": "detections", "seq": result.frame.seq,
            "captured_at": round(result.frame.captured_wall * 1e3, 1),
            "frame_age_ms": latency["frame_age"], "inference_ms": latency["inference"],
            "boxes": boxes,
        }  # fmt: skip
        for v in viewers:
            v.send(msg)

    def on_event(self, camera: str, event: ObjectEvent, record: ResultRecord | None) -> None:
        """Forward the object event to the stream."""
        self.stream.on_event(camera, event, record)

    def _on_encoded(self, frame: EncodedFrame) -> None:
        self.metrics.encode.observe(frame.encode_ms / 1e3)

    # ---- HTTP ---------------------------------------------------------------------------------

    def build_app(self) -> web.Application:
        """The aiohttp application: routes, static files, token auth and JSON errors middleware."""
        app = web.Application(client_max_size=self.hcfg.max_body_bytes, middlewares=[json_errors, self._auth])
        app.router.add_get("/", self._index)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/api/stats", self._stats_handler)
        app.router.add_get("/api/config", self._config)
        app.router.add_get("/api/cameras", self._cameras)
        self.latest.add_routes(app)
        app.router.add_post("/api/webrtc/offer", self._offer)
        self.detect_api.add_routes(app)
        budget_api.add_routes(app, lambda: self._pipeline)
        model_api.add_routes(app, lambda: self._pipeline)
        config_api.add_routes(app, lambda: self._pipeline)
        events_api.add_routes(app, lambda: self._pipeline)
        app.router.add_get("/api/ws", self.stream.handle)
        app.router.add_static("/static/", str(resources.files("app.web") / "static"), show_index=False)
        return app

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        expected = self.token.token
        if expected is None or request.path.startswith(OPEN_PATHS):
            return await handler(request)
        if request.path == "/health" and not self.hcfg.health_requires_token:
            return await handler(request)
        if not token_matches(expected, presented_token(request.headers, request.query)):
            if request.path == DEEPSTACK_PATH:
                # DeepStack clients (Blue Iris, Home Assistant) can only send their key as the form field
                # `api_key`: the handler checks it after reading the body and before decoding anything.
                request[API_KEY_PENDING] = expected
                return await handler(request)
            raise json_error(web.HTTPUnauthorized,
                             "a valid token is required (Authorization: Bearer <token>, or ?token=<token>)",
                             headers={"WWW-Authenticate": 'Bearer realm="vigil"'})  # fmt: skip
        return await handler(request)

    async def _index(self, request: web.Request) -> web.StreamResponse:
        page = resources.files("app.web") / "static" / "index.html"
        return web.Response(text=page.read_text(encoding="utf-8"), content_type="text/html",
                            headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})  # fmt: skip

    def _stats(self) -> dict:
        if self._pipeline is None:
            return {"cameras": {}}
        return self._pipeline.stats_document()

    async def _stats_handler(self, request: web.Request) -> web.Response:
        return web.json_response(self._stats())

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), headers={"Content-Type": "text/plain; version=0.0.4"})

    async def _health(self, request: web.Request) -> web.Response:
        p = self._pipeline
        limit = self.hcfg.health_max_result_age_s
        age = p.last_result_age_s() if p is not None else None
        cameras = {name: s.capture.connected for name, s in (p.stats.items() if p else [])}
        body = {"result_age_s": None if age is None else round(age, 2), "max_result_age_s": limit,
                "cameras_connected": cameras}  # fmt: skip
        if age is None:
            return web.json_response({"status": "starting", "reason": "no result yet", **body}, status=503)
        if age > limit:
            reason = f"no result for {age:.1f} s (limit {limit:g} s)"
            return web.json_response({"status": "unhealthy", "reason": reason, **body}, status=503)
        return web.json_response({"status": "ok", **body})

    async def _config(self, request: web.Request) -> web.Response:
        return web.json_response(redact(self.cfg.model_dump(mode="json")))

    async def _cameras(self, request: web.Request) -> web.Response:
        cams = [camera_document(c, len(self.viewers.viewers(c.name))) for c in self.cfg.cameras]
        return web.json_response({"cameras": cams, "max_viewers": self.hcfg.max_viewers,
                                  "preview_fps": self.hcfg.preview_fps, "grid_fps": self.hcfg.grid_fps})  # fmt: skip

    async def _offer(self, request: web.Request) -> web.Response:
        if request.content_type != "application/json":
            raise json_error(web.HTTPUnsupportedMediaType, "send the offer as application/json")
        try:
            body = json.loads(await request.text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise json_error(web.HTTPBadRequest, "the body is not valid JSON") from None
        offer = parse_offer(body, list(self.encoders))
        if not self.viewers.reserve():
            limit = self.hcfg.max_viewers
            raise json_error(web.HTTPServiceUnavailable, f"viewer limit reached (http.max_viewers={limit})",
                             headers={"Retry-After": "5"})  # fmt: skip
        try:
            viewer, sdp = await answer_offer(
                offer, self.hcfg, self.ice_credentials, self.encoders[offer.camera], self.viewers,
                request.remote or "?",
            )  # fmt: skip
        except BaseException:
            self.viewers.release_reservation()
            raise
        self.viewers.add(viewer)
        log.info("viewer %d watching %s from %s", viewer.id, offer.camera, request.remote)
        return web.json_response({"type": "answer", "sdp": sdp, "viewer": viewer.id})
