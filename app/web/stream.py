"""The live WebSocket stream (`GET /api/ws`): results, object events and system events as JSON messages.

Every message is a JSON object whose `type` says what it is:

- `{"type": "result", "data": {...}}`: one processed frame; `data` is the MQTT detections payload
  (`app.pipeline.payloads.detections_payload`). Every processed frame, not rate-limited, tracked or not.
- `{"type": "event", "data": {...}}`: one object event; `data` is the MQTT event payload, whose own
  `type` is new/update/end/alert.
- `{"type": "system", "data": {...}}`: a restart, recycle, capture restart or backend change; `data` is
  the MQTT system payload (no `camera` for worker-wide events).
- `{"type": "dropped", "count": N}`: sent before the next message that gets through after the client
  fell behind; N messages were dropped (the oldest first) since the previous notice.

The payloads are wrapped instead of flattened because events and system payloads already carry a `type`
of their own; wrapped, they are byte-for-byte what MQTT publishes.

A slow client never slows the pipeline: the pipeline's hooks only serialise a message once and append it
to each interested client's bounded queue (no await, O(clients)); one writer task per client sends from
its queue, and a full queue loses its oldest message. The socket's own buffering is kept small
(`WRITER_LIMIT`) so that backlog builds up in that queue, where old messages give way to new ones,
rather than in kernel and transport buffers as stale data.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from aiohttp import WSCloseCode, WSMsgType, web
from multidict import MultiMapping

from app.config import ApiConfig
from app.pipeline.payloads import detections_payload, event_payload, system_payload, to_json
from app.pipeline.records import ResultRecord, SystemEvent
from app.tracking.objects import ObjectEvent
from app.web.errors import json_error

log = logging.getLogger(__name__)

StreamType = Literal["results", "events", "system"]
STREAM_TYPES: tuple[StreamType, ...] = ("results", "events", "system")

# What a client's connection may hold besides its queue, bytes. aiohttp waits for the socket to drain only
# after WRITER_LIMIT bytes were written (256 KiB by default), the transport buffers up to its high-water
# mark, and Linux grows a socket's send buffer to megabytes: minutes of stale messages for a slow client.
# Kept small, a client that cannot keep up makes its writer wait soon, and its queue drops the oldest.
WRITER_LIMIT = 16 * 1024
SEND_BUFFER = 32 * 1024  # SO_SNDBUF (the kernel doubles it)
# How long `stop` waits for clients to answer the close handshake before cutting them off, s.
CLOSE_GRACE_S = 2.0
RETRY_AFTER_S = 5


@dataclass(frozen=True)
class StreamFilter:
    """What one client asked for.

    Attributes:
        cameras: Only these cameras; None for all. Worker-wide system events (no camera) always pass.
        types: Which kinds of message: `results`, `events`, `system`.
    """

    cameras: frozenset[str] | None
    types: frozenset[StreamType]

    def wants(self, kind: StreamType, camera: str | None) -> bool:
        """Whether a message of `kind` about `camera` (None: not about one camera) goes to this client."""
        if kind not in self.types:
            return False
        return self.cameras is None or camera is None or camera in self.cameras

    @classmethod
    def from_query(cls, query: MultiMapping[str], cameras: Sequence[str]) -> StreamFilter:
        """Parse `?camera=` and `?types=` (each repeatable and comma-separated).

        Raises:
            web.HTTPException: 404 for an unknown camera, 400 for an unknown or empty type list (JSON body).
        """
        wanted_cams = _values(query.getall("camera", []))
        unknown = [c for c in wanted_cams if c not in cameras]
        if unknown:
            raise json_error(web.HTTPNotFound, f"unknown camera {unknown[0]!r} (cameras: {', '.join(cameras)})")
        types: list[str] = list(STREAM_TYPES)
        if "types" in query:
            types = _values(query.getall("types"))
            bad = [t for t in types if t not in STREAM_TYPES]
            if bad or not types:
                what = f"unknown type {bad[0]!r}" if bad else "types is empty"
                raise json_error(web.HTTPBadRequest, f"{what} (types: {','.join(STREAM_TYPES)})")
        return cls(frozenset(wanted_cams) if wanted_cams else None, frozenset(types))  # type: ignore[arg-type]


def _values(raw: Iterable[str]) -> list[str]:
    return [v.strip() for item in raw for v in item.split(",") if v.strip()]


@dataclass(eq=False)
class _Client:
    """One connected client: its socket, filter, bounded queue of serialised messages and counters."""

    id: int
    ws: web.WebSocketResponse
    request: web.Request
    filter: StreamFilter
    remote: str
    queue: deque[str]
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    dropped_pending: int = 0  # dropped since the last `dropped` notice
    dropped: int = 0
    sent: int = 0
    writer: asyncio.Task[None] | None = None

    def offer(self, message: str) -> bool:
        """Queue one message (never blocks); False when the oldest queued one had to go for it."""
        full = len(self.queue) == self.queue.maxlen
        if full:
            self.dropped_pending += 1
            self.dropped += 1
        self.queue.append(message)  # a full deque with maxlen drops its leftmost (oldest) item
        self.wake.set()
        return not full


class StreamHub:
    """Serves `GET /api/ws` and fans the pipeline's results and events out to its clients.

    Args:
        device_id: The appliance id every payload carries.
        cameras: The configured camera names (the `?camera=` filter accepts only these).
        api: `api.max_ws_clients`, `api.ws_queue` (messages per client) and `api.ws_heartbeat_s`.
    """

    def __init__(self, device_id: str, cameras: Sequence[str], api: ApiConfig) -> None:
        self.device_id = device_id
        self.cameras = list(cameras)
        self.max_clients = api.max_ws_clients
        self.queue_size = api.ws_queue
        self.heartbeat_s = api.ws_heartbeat_s
        self._clients: dict[int, _Client] = {}
        self._pending = 0  # handshakes under way: counted against the limit before they complete
        self._ids = itertools.count(1)
        self._stopping = False
        self.connections = 0
        self.rejected_full = 0
        self._sent_gone = 0  # sent/dropped of clients that left, so totals never go down
        self._dropped_gone = 0

    def reconfigure(self, cameras: Sequence[str], api: ApiConfig) -> None:
        """A config reload: the cameras the `?camera=` filter accepts and the `api.*ws*` limits for new clients."""
        self.cameras = list(cameras)
        self.max_clients, self.queue_size, self.heartbeat_s = api.max_ws_clients, api.ws_queue, api.ws_heartbeat_s

    def __len__(self) -> int:
        return len(self._clients)

    # ---- pipeline hooks (on the loop, never awaiting) ---------------------------------------

    def on_result(self, record: ResultRecord) -> None:
        """One processed frame -> `{"type": "result", "data": <detections payload>}` to interested clients."""
        targets = self._targets("results", record.camera)
        if targets:
            self._send(targets, {"type": "result", "data": detections_payload(self.device_id, record)})

    def on_event(self, camera: str, event: ObjectEvent, record: ResultRecord | None) -> None:
        """One object event -> `{"type": "event", "data": <event payload>}` to interested clients."""
        targets = self._targets("events", camera)
        if targets:
            self._send(targets, {"type": "event", "data": event_payload(self.device_id, camera, event, record)})

    def on_system_event(self, event: SystemEvent) -> None:
        """One supervisor action -> `{"type": "system", "data": <system payload>}` to interested clients.

        Worker-wide events (no camera) go to every client that asked for system events, once.
        """
        targets = self._targets("system", event.camera)
        if targets:
            self._send(targets, {"type": "system", "data": system_payload(self.device_id, event.camera, event)})

    def _targets(self, kind: StreamType, camera: str | None) -> list[_Client]:
        return [c for c in self._clients.values() if c.filter.wants(kind, camera)]

    @staticmethod
    def _send(targets: list[_Client], message: dict) -> None:
        text = to_json(message)  # once per message, whatever the number of clients
        for c in targets:
            c.offer(text)

    # ---- clients ---------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """`GET /api/ws`: check filters and the client limit, upgrade, then serve until either side closes.

        Raises:
            web.HTTPException: before upgrading, as JSON: 404 unknown camera, 400 bad `types`, 426 not a
                WebSocket handshake, 503 (with Retry-After) at `api.max_ws_clients` or while stopping.
        """
        flt = StreamFilter.from_query(request.query, self.cameras)
        ws = web.WebSocketResponse(heartbeat=self.heartbeat_s, compress=False, max_msg_size=64 * 1024,
                                   writer_limit=WRITER_LIMIT)  # fmt: skip
        # No compression: it would cost CPU per client and per message on the pipeline's loop.
        if not ws.can_prepare(request).ok:
            raise json_error(web.HTTPUpgradeRequired, "GET /api/ws is a WebSocket endpoint (Upgrade: websocket)",
                             headers={"Upgrade": "websocket"})  # fmt: skip
        if self._stopping:
            retry = {"Retry-After": str(RETRY_AFTER_S)}
            raise json_error(web.HTTPServiceUnavailable, "Vigil is stopping", headers=retry)
        if len(self._clients) + self._pending >= self.max_clients:
            self.rejected_full += 1
            raise json_error(web.HTTPServiceUnavailable,
                             f"WebSocket client limit reached (api.max_ws_clients={self.max_clients})",
                             headers={"Retry-After": str(RETRY_AFTER_S)})  # fmt: skip
        self._pending += 1
        try:
            await ws.prepare(request)
        finally:
            self._pending -= 1
        if self._stopping:  # `stop` ran during the handshake and did not see this one
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"vigil is stopping")
            return ws
        _limit_buffering(request)
        client = _Client(next(self._ids), ws, request, flt, request.remote or "?", deque(maxlen=self.queue_size))
        self._clients[client.id] = client
        self.connections += 1
        client.writer = asyncio.create_task(self._write(client), name=f"ws-client-{client.id}")
        log.info("stream client %d from %s (types %s, cameras %s)", client.id, client.remote,
                 ",".join(sorted(flt.types)), ",".join(sorted(flt.cameras)) if flt.cameras else "all")  # fmt: skip
        try:
            # Reading keeps the heartbeat going (pongs) and sees the close; what clients send is ignored.
            async for msg in ws:
                if msg.type is WSMsgType.ERROR:  # no pong in time, or a protocol error
                    break
        finally:
            self._remove(client)
            await _cancel(client.writer)
            if ws.exception() is not None or (request.transport and request.transport.get_write_buffer_size()):
                _abort(request)  # dead (no pong) or backed up: drop what is buffered instead of waiting to flush
            log.info("stream client %d left (sent %d, dropped %d%s)", client.id, client.sent, client.dropped,
                     f", {ws.exception()}" if ws.exception() else "")  # fmt: skip
        return ws

    def _remove(self, client: _Client) -> None:
        if self._clients.pop(client.id, None) is not None:
            self._sent_gone += client.sent
            self._dropped_gone += client.dropped
            client.queue.clear()

    async def _write(self, client: _Client) -> None:
        """Send the client's queue in order, each run of drops announced before the next message."""
        ws = client.ws
        try:
            while True:
                await client.wake.wait()
                client.wake.clear()
                while client.queue:
                    if client.dropped_pending:
                        n, client.dropped_pending = client.dropped_pending, 0
                        await ws.send_str(to_json({"type": "dropped", "count": n}))
                        client.sent += 1
                    await ws.send_str(client.queue.popleft())
                    client.sent += 1
        except ConnectionError:  # the client went away; its handler sees the close and cleans up
            pass
        except Exception:  # never silently: the client would stay connected and get nothing
            log.exception("stream client %d: sending failed", client.id)
            await ws.close(code=WSCloseCode.INTERNAL_ERROR)

    async def stop(self) -> None:
        """Refuse new clients and close every client with 1001 (going away), cutting off those that do not answer."""
        self._stopping = True
        clients = list(self._clients.values())
        for c in clients:
            await _cancel(c.writer)
        closes = [asyncio.create_task(c.ws.close(code=WSCloseCode.GOING_AWAY, message=b"vigil is stopping"))
                  for c in clients]  # fmt: skip
        if not closes:
            return
        _, late = await asyncio.wait(closes, timeout=CLOSE_GRACE_S)
        for t in late:
            t.cancel()
        await asyncio.gather(*closes, return_exceptions=True)
        for c in clients:
            # A client that did not take the close frame leaves unsent bytes that keep its transport open
            # (and the server's shutdown waiting) for good: cut it off; the others are closed already.
            _abort(c.request)
            self._remove(c)

    # ---- figures ---------------------------------------------------------------------------

    def stats(self) -> dict:
        """`clients` now, `connections` accepted, `rejected_full` (503), messages `sent` and `dropped`, `queued` now."""
        clients = list(self._clients.values())
        return {
            "clients": len(clients), "connections": self.connections, "rejected_full": self.rejected_full,
            "sent": self._sent_gone + sum(c.sent for c in clients),
            "dropped": self._dropped_gone + sum(c.dropped for c in clients),
            "queued": sum(len(c.queue) for c in clients),
        }  # fmt: skip


def _limit_buffering(request: web.Request) -> None:
    """Small transport and kernel send buffers for one upgraded connection (see WRITER_LIMIT)."""
    transport = request.transport
    if transport is None:
        return
    transport.set_write_buffer_limits(high=WRITER_LIMIT)
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):  # not a TCP socket (a test's pipe): nothing to bound
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)


def _abort(request: web.Request) -> None:
    """Close the connection at once, discarding unsent bytes (a no-op once it is gone)."""
    if request.transport is not None:
        request.transport.abort()


async def _cancel(task: asyncio.Task[None] | None) -> None:
    """Cancel a writer and wait until it ended (a cancellation of the caller still propagates)."""
    if task is not None and not task.done():
        task.cancel()
        await asyncio.wait([task])
