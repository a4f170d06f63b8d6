"""`GET /api/cameras/{name}/latest.jpg`: one camera's newest frame as a JPEG (the preview page's grid tiles).

A grid of 4-16 cameras cannot afford one WebRTC encoder per camera; a JPEG per tile every second or so costs
a resize and an encode per request, read from the frame ring like any other reader, never from the frame
path. Large images are scaled and encoded in a thread of their own (at a lower priority, like the preview
encoder) so the event loop never waits on them; an image already encoded for the same frame and width is
served again from a small cache, so several pages polling the same camera cost one encode.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np
from aiohttp import web

from app.ring import FrameRing
from app.web.encoder import _lower_priority
from app.web.errors import json_error

log = logging.getLogger(__name__)

ROUTE = "/api/cameras/{name}/latest.jpg"
MIN_WIDTH, MAX_WIDTH = 64, 1920  # `?width=` is clamped to this range (px)
JPEG_QUALITY = 80
# Output images above this many pixels are scaled and encoded in the thread, smaller ones on the loop
# (a 320x240 JPEG takes well under a millisecond; a thread hop would cost about as much).
INLINE_MAX_PIXELS = 320 * 240
CACHE_ENTRIES = 64  # (camera, width) pairs kept; pages ask for a handful of tile widths
READ_ATTEMPTS = 3  # a frame rewritten while we scaled it is read again (the writer lapped us)
RETRY_AFTER_S = 1


@dataclass(frozen=True, slots=True)
class LatestJpeg:
    """One encoded frame.

    Attributes:
        data: The JPEG bytes.
        seq: Ring sequence number of the frame.
        captured_wall: Capture time, s since the epoch.
        width: Image width, px.
        height: Image height, px.
    """

    data: bytes
    seq: int
    captured_wall: float
    width: int
    height: int


def parse_width(raw: str | None) -> int | None:
    """The `width` query parameter: None when absent, else an integer clamped to MIN_WIDTH..MAX_WIDTH.

    Raises:
        web.HTTPBadRequest: not an integer (JSON body naming the parameter).
    """
    if raw is None:
        return None
    try:
        width = int(raw.strip())
    except ValueError:
        raise json_error(web.HTTPBadRequest, f"width must be an integer number of pixels, not {raw[:40]!r}") from None
    return max(MIN_WIDTH, min(MAX_WIDTH, width))


def output_size(width: int, height: int, wanted: int | None) -> tuple[int, int]:
    """The JPEG's size for a `width x height` frame: `wanted` wide (never wider than the frame), aspect kept."""
    w = min(width, wanted if wanted is not None else MAX_WIDTH)
    return w, max(1, round(height * w / width))


def encode_latest(ring: FrameRing, wanted: int | None) -> LatestJpeg | None:
    """Scale the ring's newest frame to `wanted` px wide and encode it as JPEG.

    Args:
        ring: The camera's frame ring.
        wanted: Output width (px, already clamped), None for the frame's own width (at most MAX_WIDTH).

    Returns:
        The JPEG, or None when the ring has no frame yet or the writer kept rewriting it while we read.
    """
    for _ in range(READ_ATTEMPTS):
        view = ring.read_latest()
        if view is None:
            return None
        meta = view.meta
        w, h = output_size(meta.width, meta.height, wanted)
        # Scale straight out of shared memory (a copy of the small image), then check the slot was not rewritten.
        image = view.image if (w, h) == (meta.width, meta.height) else None
        small = view.copy() if image is not None else cv2.resize(view.image, (w, h), interpolation=cv2.INTER_AREA)
        if small is None or not view.is_valid():
            continue
        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(small), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            return None
        return LatestJpeg(buf.tobytes(), meta.seq, meta.captured_wall, w, h)
    return None


class LatestFrameApi:
    """Serves `GET /api/cameras/{name}/latest.jpg` (auth: the server's middleware, as for every /api path).

    Args:
        cameras: The configured camera names, read per request (a reload changes them).
        rings: The pipeline's frame rings by camera, read per request (None before the pipeline started).
        nice: Niceness of the encoding thread above the main process (`http.preview_nice`).
    """

    def __init__(
        self, cameras: Callable[[], Sequence[str]], rings: Callable[[], Mapping[str, FrameRing] | None], nice: int
    ) -> None:
        self._cameras = cameras
        self._rings = rings
        self._executor = ThreadPoolExecutor(1, "latest-jpeg", initializer=_lower_priority, initargs=(nice,))
        self._cache: dict[tuple[str, int | None], LatestJpeg] = {}
        self.served = 0
        self.encoded = 0

    def add_routes(self, app: web.Application) -> None:
        """Register the route on `app`."""
        app.router.add_get(ROUTE, self.handle)

    def stop(self) -> None:
        """Shut the encoding thread down (pending encodes are cancelled)."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def handle(self, request: web.Request) -> web.Response:
        """`GET /api/cameras/{name}/latest.jpg[?width=N]`: image/jpeg with `X-Frame-Seq` and `X-Captured-At`.

        Raises:
            web.HTTPException: as JSON: 400 a width that is not an integer, 404 unknown camera, 503 (with
                Retry-After) no frame yet or the image could not be made.
        """
        name = request.match_info["name"]
        wanted = parse_width(request.query.get("width"))
        cameras = list(self._cameras())
        if name not in cameras:
            raise json_error(web.HTTPNotFound, f"unknown camera {name!r} (cameras: {', '.join(cameras)})")
        rings = self._rings() or {}
        ring = rings.get(name)
        retry = {"Retry-After": str(RETRY_AFTER_S)}
        if ring is None or _latest_seq(ring) <= 0:
            raise json_error(web.HTTPServiceUnavailable, f"camera {name!r} has no frame yet", headers=retry)
        jpeg = await self._latest(name, ring, wanted)
        if jpeg is None:
            raise json_error(web.HTTPServiceUnavailable, f"camera {name!r}: no frame could be read", headers=retry)
        self.served += 1
        return web.Response(body=jpeg.data, content_type="image/jpeg", headers={
            "Cache-Control": "no-store", "X-Frame-Seq": str(jpeg.seq), "X-Captured-At": f"{jpeg.captured_wall:.3f}",
        })  # fmt: skip

    async def _latest(self, name: str, ring: FrameRing, wanted: int | None) -> LatestJpeg | None:
        key = (name, wanted)
        cached = self._cache.get(key)
        if cached is not None and cached.seq == _latest_seq(ring):
            return cached
        # The frame's size is known only once read: estimate the output from the slot's aspect ratio.
        w, h = ring.spec.max_width, ring.spec.max_height
        big = wanted is None or wanted * wanted * h / w > INLINE_MAX_PIXELS
        try:
            if big:
                jpeg = await asyncio.get_running_loop().run_in_executor(self._executor, encode_latest, ring, wanted)
            else:
                jpeg = encode_latest(ring, wanted)
        except (TypeError, ValueError, OSError, cv2.error, RuntimeError):  # a ring closed by a reload, a codec failure
            log.warning("latest.jpg for %s failed", name, exc_info=True)
            return None
        if jpeg is None:
            return None
        self.encoded += 1
        if len(self._cache) >= CACHE_ENTRIES and key not in self._cache:
            self._cache.pop(next(iter(self._cache)))
        self._cache[key] = jpeg
        return jpeg


def _latest_seq(ring: FrameRing) -> int:
    """The ring's newest seq; 0 for a ring a reload closed meanwhile (its header is gone)."""
    try:
        return ring.latest_seq
    except (TypeError, ValueError):
        return 0
