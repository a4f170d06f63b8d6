"""Preview viewers: one RTCPeerConnection each, fed from the camera's shared encoder.

Each viewer gets the encoded video track and a `detections` DataChannel (opened by the client in its
offer). Video RTP timestamps are the capture clock, rebased to the viewer's first frame, and every
video frame is announced on the channel as {seq, pts}: a client maps a decoded frame's RTP timestamp
to the ring sequence number and so to the detections of exactly that frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time

import av
from aiortc import RTCDataChannel, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from app.web.encoder import TIME_BASE, EncodedFrame, PacketQueue, PreviewEncoder

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 30.0  # an offer that never connects gives its viewer slot back
CHANNEL_BUFFER_LIMIT = 256 * 1024  # a channel this far behind skips messages instead of growing


class PreviewTrack(MediaStreamTrack):
    """Hands the shared encoder's packets to aiortc, which packetizes without re-encoding."""

    kind = "video"

    def __init__(self, encoder: PreviewEncoder, viewer: Viewer) -> None:
        super().__init__()
        self._encoder = encoder
        self._viewer = viewer
        self._queue: PacketQueue | None = encoder.subscribe()
        self._pts0: int | None = None

    async def recv(self) -> av.Packet:
        """Wait for the encoder's next VP8 packet, with pts rebased to this viewer's first frame (90 kHz).

        Also announces the frame on the viewer's DataChannel.

        Raises:
            MediaStreamError: The track was stopped or the encoder ended the stream (aiortc then stops sending).
        """
        if self.readyState != "live" or self._queue is None:
            raise MediaStreamError
        frame = await self._queue.get()
        if frame is None:
            raise MediaStreamError
        if self._pts0 is None:
            self._pts0 = frame.pts
        pts = frame.pts - self._pts0
        packet = av.Packet(frame.data)
        packet.pts = pts
        packet.time_base = TIME_BASE
        self._viewer.on_video_frame(frame, pts)
        return packet

    def stop(self) -> None:
        """Unsubscribe from the encoder and end the track."""
        if self._queue is not None:
            self._encoder.unsubscribe(self._queue)
            self._queue = None
        super().stop()


class Viewer:
    """One preview viewer: its peer connection, video track and ``detections`` DataChannel.

    Args:
        viewer_id: Registry-wide id, for logs.
        pc: The viewer's peer connection.
        camera: Name of the camera it watches.
        remote: The client's address, for logs.
    """

    def __init__(self, viewer_id: int, pc: RTCPeerConnection, camera: str, remote: str) -> None:
        self.id = viewer_id
        self.pc = pc
        self.camera = camera
        self.remote = remote
        self.channel: RTCDataChannel | None = None
        self.track: PreviewTrack | None = None
        self.created = time.monotonic()
        self.frames_sent = 0
        self.messages_skipped = 0
        self.closed = asyncio.Event()
        self.expiry: asyncio.Task | None = None

    def send(self, message: dict) -> None:
        """Send a JSON message on the DataChannel, best effort.

        Dropped silently before the channel opens or after it closes; skipped and counted in
        ``messages_skipped`` while more than CHANNEL_BUFFER_LIMIT bytes are queued.
        """
        ch = self.channel
        if ch is None or ch.readyState != "open":
            return
        if ch.bufferedAmount > CHANNEL_BUFFER_LIMIT:
            self.messages_skipped += 1
            return
        with contextlib.suppress(Exception):  # a channel closing under us is not an error
            ch.send(json.dumps(message, separators=(",", ":")))

    def on_video_frame(self, frame: EncodedFrame, pts: int) -> None:
        """Announce a sent frame as ``{type: "frame", seq, pts, captured_at (wall ms), width, height}``.

        Args:
            frame: The encoded frame, carrying its ring seq and capture time.
            pts: Its RTP timestamp as this viewer sees it (90 kHz ticks since the viewer's first frame).
        """
        self.frames_sent += 1
        self.send({"type": "frame", "seq": frame.seq, "pts": pts, "captured_at": round(frame.captured_wall * 1e3, 1),
                   "width": frame.width, "height": frame.height})  # fmt: skip

    async def close(self) -> None:
        """Stop the track, close the peer connection (errors ignored) and set ``closed``; safe to repeat."""
        if self.expiry is not None and self.expiry is not asyncio.current_task():
            self.expiry.cancel()
        if self.track is not None:
            self.track.stop()
        with contextlib.suppress(Exception):
            await self.pc.close()
        self.closed.set()


class ViewerRegistry:
    """Bounded set of live viewers; every exit path releases the peer connection and the subscription."""

    def __init__(self, max_viewers: int) -> None:
        self.max_viewers = max_viewers
        self._viewers: dict[int, Viewer] = {}
        self._reserved = 0
        self._ids = itertools.count(1)
        self.sessions = 0
        self.rejected_full = 0

    def __len__(self) -> int:
        return len(self._viewers)

    def viewers(self, camera: str | None = None) -> list[Viewer]:
        """Live viewers, of one camera or (None) of all."""
        return [v for v in self._viewers.values() if camera is None or v.camera == camera]

    def reserve(self) -> bool:
        """Reserve a slot for an offer in negotiation, so concurrent offers cannot overshoot max_viewers.

        Returns:
            False (and counts ``rejected_full``) when live viewers plus reservations reach ``max_viewers``.
            On True the caller must later ``add`` a viewer or ``release_reservation``.
        """
        if len(self._viewers) + self._reserved >= self.max_viewers:
            self.rejected_full += 1
            return False
        self._reserved += 1
        return True

    def next_id(self) -> int:
        """A new viewer id, counting from 1."""
        return next(self._ids)

    def release_reservation(self) -> None:
        """Give back a slot from ``reserve`` whose offer failed."""
        self._reserved = max(0, self._reserved - 1)

    def add(self, viewer: Viewer) -> None:
        """Turn a reservation into a live viewer.

        The viewer is removed when its connection fails or closes, or if it is not connected within
        CONNECT_TIMEOUT_S. Must be called from the event loop.
        """
        self.release_reservation()
        self._viewers[viewer.id] = viewer
        self.sessions += 1
        pc = viewer.pc

        @pc.on("connectionstatechange")
        async def _state() -> None:
            log.debug("viewer %d: %s", viewer.id, pc.connectionState)
            if pc.connectionState in ("failed", "closed"):
                await self.remove(viewer)

        # Kept on the viewer: the loop holds tasks only weakly.
        viewer.expiry = asyncio.get_running_loop().create_task(self._expire_if_unconnected(viewer))

    async def _expire_if_unconnected(self, viewer: Viewer) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(viewer.closed.wait(), CONNECT_TIMEOUT_S)
            return
        if viewer.pc.connectionState != "connected":
            log.info("viewer %d from %s never connected; closing it", viewer.id, viewer.remote)
            await self.remove(viewer)

    async def remove(self, viewer: Viewer) -> None:
        """Forget a viewer and close it; safe to call more than once."""
        if self._viewers.pop(viewer.id, None) is not None:
            log.info("viewer %d (%s) left after %.0f s", viewer.id, viewer.camera, time.monotonic() - viewer.created)
        await viewer.close()

    async def close_all(self) -> None:
        """Remove and close every viewer (at shutdown)."""
        for v in list(self._viewers.values()):
            await self.remove(v)
