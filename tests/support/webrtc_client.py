"""A real aiortc viewer for the tests: offers recvonly video plus the `detections` DataChannel."""

from __future__ import annotations

import asyncio
import json

import aiohttp
from aiortc import RTCPeerConnection, RTCSessionDescription

from app.web import ice


class Viewer:
    def __init__(self) -> None:
        self.pc = RTCPeerConnection()
        self.messages: list[dict] = []
        self.track_ready: asyncio.Future = asyncio.get_running_loop().create_future()
        self.channel = None
        self.viewer_id: int | None = None

    async def connect(self, base_url: str, camera: str = "cam", token: str | None = None) -> int:
        """Returns the HTTP status of the offer (200 when connected)."""
        self.pc.addTransceiver("video", direction="recvonly")
        self.channel = self.pc.createDataChannel("detections")
        self.channel.on("message", lambda m: self.messages.append(json.loads(m)))
        self.pc.on("track", lambda t: self.track_ready.done() or self.track_ready.set_result(t))
        with ice.host_addresses(["127.0.0.1"]):  # loopback only, like the server under test
            await self.pc.setLocalDescription(await self.pc.createOffer())
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        body = {"type": "offer", "sdp": self.pc.localDescription.sdp, "camera": camera}
        url = f"{base_url}/api/webrtc/offer"
        async with aiohttp.ClientSession() as s, s.post(url, json=body, headers=headers) as r:
            if r.status != 200:
                return r.status
            answer = await r.json()
        self.viewer_id = answer["viewer"]
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
        return 200

    async def frames(self, n: int, timeout: float = 20.0) -> list:
        track = await asyncio.wait_for(self.track_ready, timeout)
        return [await asyncio.wait_for(track.recv(), timeout) for _ in range(n)]

    def of_type(self, kind: str) -> list[dict]:
        return [m for m in self.messages if m.get("type") == kind]

    async def close(self) -> None:
        await self.pc.close()
