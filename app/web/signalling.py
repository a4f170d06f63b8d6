"""POST /api/webrtc/offer: validate everything a client sends before aiortc sees it."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from aiohttp import web
from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.sdp import SessionDescription

from app.config import HttpConfig
from app.web import ice
from app.web.encoder import PreviewEncoder
from app.web.errors import json_error
from app.web.viewers import PreviewTrack, Viewer, ViewerRegistry

log = logging.getLogger(__name__)

MAX_SDP_BYTES = 32 * 1024


@dataclass(frozen=True)
class Offer:
    """A validated offer: SDP text of at most MAX_SDP_BYTES and a configured camera's name."""

    sdp: str
    camera: str


def parse_offer(body: object, cameras: list[str]) -> Offer:
    """Validate a client's offer body before aiortc parses it.

    Args:
        body: The decoded JSON body: ``{"sdp": str, "type": "offer", "camera": str}``; ``type`` defaults to
            ``"offer"`` and ``camera`` to the first camera.
        cameras: Names of the configured cameras, at least one.

    Returns:
        The offer.

    Raises:
        web.HTTPException: A JSON 400 (not an object, wrong type, not SDP, NUL characters), 413 (SDP longer
            than MAX_SDP_BYTES) or 404 (unknown camera), built with ``json_error``.
    """
    if not isinstance(body, dict):
        raise json_error(web.HTTPBadRequest, "the body must be a JSON object")
    sdp, kind, camera = body.get("sdp"), body.get("type", "offer"), body.get("camera", cameras[0])
    if kind != "offer":
        raise json_error(web.HTTPBadRequest, "'type' must be \"offer\"")
    if not isinstance(sdp, str) or not sdp.startswith("v=0"):
        raise json_error(web.HTTPBadRequest, "'sdp' must be an SDP offer (a string starting with v=0)")
    if len(sdp) > MAX_SDP_BYTES:
        raise json_error(web.HTTPRequestEntityTooLarge, f"'sdp' is longer than {MAX_SDP_BYTES} bytes",
                         max_size=MAX_SDP_BYTES, actual_size=len(sdp))  # fmt: skip
    if "\x00" in sdp:
        raise json_error(web.HTTPBadRequest, "'sdp' contains NUL characters")
    if not isinstance(camera, str) or camera not in cameras:
        raise json_error(web.HTTPNotFound, f"unknown camera {camera!r}; cameras: {', '.join(cameras)}")
    return Offer(sdp, camera)


def rtc_configuration(cfg: HttpConfig, credentials: dict[int, str]) -> RTCConfiguration:
    """The peer connection configuration: the configured STUN/TURN servers.

    Args:
        cfg: HTTP config holding ``ice_servers``.
        credentials: TURN credential per index into ``cfg.ice_servers`` (read from secret files); servers
            without one get none.
    """
    servers = [
        RTCIceServer(urls=s.urls, username=s.username, credential=credentials.get(i))
        for i, s in enumerate(cfg.ice_servers)
    ]
    return RTCConfiguration(iceServers=servers)


def _vp8_only() -> list:
    caps = RTCRtpSender.getCapabilities("video").codecs
    return [c for c in caps if c.mimeType.lower() in ("video/vp8", "video/rtx")]


def _answer_problem(sdp: str) -> str | None:
    """Why this answer would not show video, from the answer itself (what aiortc agreed to)."""
    try:
        media = [m for m in SessionDescription.parse(sdp).media if m.kind == "video"]
    except Exception:
        return "the offer could not be answered"
    if not media or media[0].port == 0:
        return "the offer has no usable video section"
    if not any(c.mimeType.lower() == "video/vp8" for c in media[0].rtp.codecs):
        return "the offer does not accept VP8 video"
    if media[0].direction not in ("sendonly", "sendrecv"):
        return "the offer's video section does not receive (use a recvonly video transceiver)"
    return None


async def answer_offer(
    offer: Offer, cfg: HttpConfig, credentials: dict[int, str], encoder: PreviewEncoder,
    registry: ViewerRegistry, remote: str,
) -> tuple[Viewer, str]:  # fmt: skip
    """Negotiate one viewer: set the offer, add the VP8 preview track, answer.

    The caller has reserved a slot in ``registry`` and adds the viewer after this returns.

    Args:
        offer: The validated offer.
        cfg: HTTP config (ICE servers, which host addresses to offer).
        credentials: TURN credential per ICE server index.
        encoder: The camera's shared encoder the track subscribes to.
        registry: Hands out the viewer id.
        remote: The client's address, for logs.

    Returns:
        The viewer and the answer SDP.

    Raises:
        web.HTTPException: A JSON 400 when the SDP is malformed, has no video section, or the answer would
            not carry VP8 video to the client. Any failure closes the connection before propagating.
    """
    pc = RTCPeerConnection(rtc_configuration(cfg, credentials))
    viewer = Viewer(registry.next_id(), pc, offer.camera, remote)
    try:
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer.sdp, type="offer"))
        except Exception as exc:  # aiortc's SDP parser raises all sorts on garbage
            raise json_error(web.HTTPBadRequest, f"malformed SDP offer: {type(exc).__name__}") from None
        video = [t for t in pc.getTransceivers() if t.kind == "video"]
        if not video:
            raise json_error(web.HTTPBadRequest, "the offer has no video section (add a recvonly video transceiver)")
        video[0].setCodecPreferences(_vp8_only())
        viewer.track = PreviewTrack(encoder, viewer)
        pc.addTrack(viewer.track)

        @pc.on("datachannel")
        def _channel(channel: RTCDataChannel) -> None:
            if channel.label == "detections":
                viewer.channel = channel

        answer = await pc.createAnswer()
        problem = _answer_problem(answer.sdp if answer is not None else "")
        if problem:
            raise json_error(web.HTTPBadRequest, problem)
        with ice.host_addresses(ice.addresses_for(cfg)):
            await pc.setLocalDescription(answer)
    except BaseException:
        await viewer.close()
        raise
    return viewer, pc.localDescription.sdp
