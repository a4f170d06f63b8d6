"""Bench viewers in their own process: `python -m app.bench.preview_client URL N SECONDS NICE` prints JSON.

Viewers on an appliance are other machines; here they share the 2-core box with the detector. So the
bench viewers do not decode (a browser decodes on its own machine): they receive, depacketize and
reassemble every frame like a real peer and timestamp it when complete, at the niceness given, and
their CPU is reported apart. Latency = capture wall time -> complete frame at the viewer.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
from typing import TYPE_CHECKING, Any, cast

import aiohttp
import av
from aiortc import RTCPeerConnection, RTCSessionDescription

from app.web import ice

if TYPE_CHECKING:
    from aiortc.codecs.base import Decoder
    from aiortc.mediastreams import MediaStreamTrack

U32 = 2**32


class _CountingDecoder:
    """Stands in for VP8 decoding in the bench viewer: one placeholder frame per complete frame."""

    def decode(self, encoded_frame: Any) -> list[av.VideoFrame]:  # aiortc's JitterFrame
        frame = av.VideoFrame(16, 16, "yuv420p")
        frame.pts = encoded_frame.timestamp
        return [frame]


def _skip_decoding() -> None:
    import aiortc.rtcrtpreceiver as receiver

    # duck-typed: the receiver only calls decode()
    receiver.get_decoder = lambda codec: cast("Decoder", _CountingDecoder())


async def _viewer(url: str, seconds: float) -> dict:
    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="recvonly")
    channel = pc.createDataChannel("detections")
    announced: dict[int, float] = {}
    det_delay: list[float] = []

    def on_message(raw: str) -> None:
        m = json.loads(raw)
        if m["type"] == "frame":
            announced[m["pts"]] = m["captured_at"]
        elif m["type"] == "detections":
            det_delay.append(time.time() * 1e3 - m["captured_at"])

    channel.on("message", on_message)
    got_track: asyncio.Future = asyncio.get_running_loop().create_future()

    def on_track(track: MediaStreamTrack) -> None:
        if not got_track.done():
            got_track.set_result(track)

    pc.on("track", on_track)
    ice.install()
    with ice.host_addresses(["127.0.0.1"]):
        await pc.setLocalDescription(await pc.createOffer())
    body = {"type": "offer", "sdp": pc.localDescription.sdp}
    async with aiohttp.ClientSession() as s, s.post(f"{url}/api/webrtc/offer", json=body) as r:
        answer = await r.json()
        if r.status != 200:
            await pc.close()
            return {"error": answer.get("error", r.status)}
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
    track = await asyncio.wait_for(got_track, 20)
    frames, latency, r0 = 0, [], None
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            f = await asyncio.wait_for(track.recv(), 5)
        except asyncio.TimeoutError:
            break
        frames += 1
        r0 = f.pts if r0 is None else r0
        captured = announced.get((f.pts - r0) % U32)
        if captured is not None:
            latency.append(time.time() * 1e3 - captured)
    await pc.close()
    return {"frames": frames, "video_latency_ms": latency, "detection_delay_ms": det_delay}


async def _main(url: str, n: int, seconds: float) -> dict:
    results = await asyncio.gather(*[_viewer(url, seconds) for _ in range(n)])
    lat = [x for r in results for x in r.get("video_latency_ms", [])]
    det = [x for r in results for x in r.get("detection_delay_ms", [])]
    return {
        "viewers": n,
        "errors": [r["error"] for r in results if "error" in r],
        "frames_per_viewer": [r.get("frames", 0) for r in results],
        "video_latency_ms_p50": round(statistics.median(lat), 1) if lat else None,
        "detection_delay_ms_p50": round(statistics.median(det), 1) if det else None,
    }


if __name__ == "__main__":
    os.nice(int(sys.argv[4]) if len(sys.argv) > 4 else 19)
    _skip_decoding()
    t0 = time.process_time()
    out = asyncio.run(_main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3])))
    out["client_cpu_s"] = round(time.process_time() - t0, 2)
    print(json.dumps(out))
